"""
amqps against a real RabbitMQ TLS listener on loopback (a private node,
L{tests.link._privatebroker}), with a CA of the test's own: the link connects
when the broker's certificate names the host and is signed by a trusted
authority, and otherwise refuses, says why, and keeps retrying (never
falling back to plain AMQP).  The CA reaches the link from the
configuration (C{link.ca_file}), as a deployment with a private CA gives it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from relay.config import ConfigError, LinkConfig, load
from relay.link.backoff import Backoff

from ._broker import BrokerTestCase, wait_for, within
from ._privatebroker import WithTLSBroker, new_ca, pem

# Twisted's own TLS setup still hands pyOpenSSL objects to pyOpenSSL.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


class TLSTests(WithTLSBroker, BrokerTestCase):
    timeout = 30

    def link(self, url: str, ca: bytes):  # type: ignore[no-untyped-def]
        config = LinkConfig(url=url, ca_file=self.ca_file(ca))
        return self.service(
            config.url, tls_trust_root=config.trust_root(),
            backoff=Backoff(reactor, initial=0.05, cap=0.2, jitter="none"),
        )

    def logged_errors(self) -> list[str]:
        logged: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if "AMQP" in str(event.get("log_format", "")) and event.get("error"):
                logged.append(str(event["error"]))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return logged

    async def test_amqps_connects_when_the_name_matches(self) -> None:
        service = self.link(self.broker.url("localhost"), self.broker.ca_pem)
        channel = await within(service.whenConnected(), 15)
        self.assertEqual(await channel.declare_quorum_queue("relay-test-tls-queue"), 0)
        self.assertTrue(service.health.connected)
        self.assertTrue(service.address.tls)

    async def test_amqps_refuses_a_certificate_for_another_host(self) -> None:
        # The certificate names localhost; the link was told 127.0.0.1.
        logged = self.logged_errors()
        service = self.link(self.broker.url("127.0.0.1"), self.broker.ca_pem)
        await wait_for(lambda: len(logged) >= 3, timeout=15)
        self.assertFalse(service.health.connected)
        self.assertIn("Mismatch", service.health.last_error or "")
        self.assertTrue(all("Mismatch" in e for e in logged), logged)

    async def test_amqps_refuses_an_unknown_ca_and_keeps_retrying(self) -> None:
        other, _ = new_ca("some other CA")
        logged = self.logged_errors()
        service = self.link(self.broker.url("localhost"), pem(other))
        await wait_for(lambda: len(logged) >= 3, timeout=15)
        self.assertFalse(service.health.connected)
        self.assertIn("certificate verify failed", service.health.last_error or "")
        self.assertTrue(all("certificate verify failed" in e for e in logged), logged)

    async def test_plain_amqp_to_the_tls_listener_does_not_connect(self) -> None:
        url = self.broker.url("localhost").replace("amqps://", "amqp://")
        service = self.service(url, backoff=Backoff(reactor, initial=0.05, cap=0.2, jitter="none"))
        await wait_for(lambda: service.health.last_error is not None, timeout=15)
        self.assertFalse(service.health.connected)


class CaFileConfigTests(BrokerTestCase):
    def write(self, name: str, content: str) -> Path:
        path = Path(self.mktemp())
        path.mkdir()
        (path / name).write_text(content)
        return path / name

    def test_a_bundle_of_several_authorities_is_one_trust_root(self) -> None:
        bundle = b"".join(pem(new_ca(f"CA {n}")[0]) for n in range(3))
        config = load(
            LinkConfig,
            self.write("link.toml", f'url = "amqps://h/"\nca_file = "{self.write("ca.pem", bundle.decode())}"\n'),
        )
        self.assertIsNotNone(config.trust_root())

    def test_a_missing_or_empty_ca_file_stops_the_start_with_one_line(self) -> None:
        missing = self.write("link.toml", 'url = "amqps://h/"\nca_file = "/nonexistent/ca.pem"\n')
        with self.assertRaises(ConfigError) as raised:
            load(LinkConfig, missing)
        self.assertIn("link.ca_file: cannot read /nonexistent/ca.pem", str(raised.exception))
        empty = self.write("ca.pem", "not a certificate\n")
        with self.assertRaises(ConfigError) as raised:
            load(LinkConfig, self.write("link.toml", f'url = "amqps://h/"\nca_file = "{empty}"\n'))
        self.assertIn("holds no PEM certificate", str(raised.exception))
