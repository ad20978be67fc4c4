"""
amqps from the security suite's side: a broker certificate from a CA the
edge does not trust is refused, the refusal is logged with its reason, and
the link keeps retrying (with backoff) rather than giving up or falling
back to plain AMQP.  The matching and wrong-hostname cases are in
C{tests/link/test_tls.py}, whose TLS-terminating proxy this reuses.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.logger import globalLogPublisher

from relay.link.backoff import Backoff
from tests.link import test_tls as tls
from tests.link._broker import wait_for

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


class UnknownCaTests(tls.TLSTests):
    # Only the test below: the inherited ones run in tests/link.
    test_amqps_connects_when_the_name_matches = None  # type: ignore[assignment]
    test_amqps_refuses_a_certificate_for_another_host = None  # type: ignore[assignment]

    async def test_amqps_refuses_an_unknown_ca_and_keeps_retrying(self) -> None:
        port = await self._proxy_for("localhost")  # signed by self.ca
        other_key = ec.generate_private_key(ec.SECP256R1())
        other_ca = tls._certificate("some other CA", "some other CA", other_key, other_key, ca=True)
        logged: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if "AMQP" in str(event.get("log_format", "")) and event.get("error"):
                logged.append(str(event["error"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        service = self.service(
            f"amqps://guest:guest@localhost:{port}/", tls_trust_root=Certificate.loadPEM(tls._pem(other_ca)),
            backoff=Backoff(reactor, initial=0.05, cap=0.2, jitter="none"),
        )
        await wait_for(lambda: len(logged) >= 3, timeout=15)
        self.assertFalse(service.health.connected)
        self.assertIn("certificate verify failed", service.health.last_error or "")
        self.assertTrue(all("certificate verify failed" in e for e in logged), logged)
