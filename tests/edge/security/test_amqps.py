"""
amqps from the deployment's side: an edge configured as an operator would
(C{link.url = "amqps://..."}, C{link.ca_file} naming a private CA) reaches
a real RabbitMQ TLS listener; configured with a CA that did not sign the
broker's certificate, it stays down, says why in C{/healthz}, and keeps
retrying.  The link-level cases (wrong host name, plain AMQP to the TLS
port) are in C{tests/link/test_tls.py}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import treq
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import TestCase

from relay.link.connection import LinkService
from relay.link.envelope import TO_CLOUD
from tests.edge.security.world import SecureEdge
from tests.link._broker import sleep
from tests.link._privatebroker import WithTLSBroker, new_ca, pem

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


class EdgeOverAmqpsTests(WithTLSBroker, TestCase):
    timeout = 60

    def edge(self, ca: bytes) -> SecureEdge:
        return SecureEdge(self, link=f'url = "{self.broker.url()}"\nca_file = "{self.ca_file(ca)}"\n')

    async def link_report_when(self, edge: SecureEdge, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The C{link} section of the edge's C{/healthz} once C{done} holds for it (or after 15 s)."""
        report: dict[str, Any] = {}
        for _ in range(150):
            response = await treq.get(f"{edge.base}/healthz", persistent=False)
            report = (await response.json())["link"]
            if done(report):
                break
            await sleep(0.1)
        return report

    async def test_the_edge_reaches_the_broker_through_its_configured_ca(self) -> None:
        # What the cloud declares when it first connects.
        cloud = LinkService(
            self.broker.url(), reactor=reactor, tls_trust_root=Certificate.loadPEM(self.broker.ca_pem)
        )
        cloud.startService()
        self.addCleanup(cloud.stopService)
        channel = await cloud.whenConnected().addTimeout(15, reactor)
        await channel.declare_destinations([TO_CLOUD])
        edge = self.edge(self.broker.ca_pem)
        report = await self.link_report_when(edge, lambda r: r["up"])
        self.assertTrue(report["up"], report)

    async def test_an_untrusted_broker_keeps_the_edge_down_and_says_why(self) -> None:
        other, _ = new_ca("some other CA")
        edge = self.edge(pem(other))
        report = await self.link_report_when(
            edge, lambda r: "certificate verify failed" in str(r.get("last_error"))
        )
        self.assertFalse(report["up"])
        self.assertIn("certificate verify failed", str(report.get("last_error")))
