"""
C{/healthz} of a running edge (its real service tree, on loopback, with the
real threaded SQLite database and RabbitMQ behind a forwarder the test
opens): 503 naming the reason while the link has been down past
C{link.unhealthy_after}, while the spool's disk is below its reserve and
while the database cannot commit a write (another process holds it
locked); 200 again once each clears.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.protocols.portforward import ProxyFactory
from twisted.trial.unittest import TestCase

from relay.config import load
from relay.edge.config import EdgeConfig
from relay.edge.tap import edge_service
from relay.link.connection import LinkService
from relay.link.envelope import TO_CLOUD
from relay.testing.transfer_world import AMQP_PORT, Vhost
from tests.conftest import free_port


class HealthzTests(TestCase):
    async def healthz(self) -> tuple[int, dict[str, Any]]:
        response = await treq.get(f"{self.base}/healthz", persistent=False)
        return response.code, json.loads(await response.content())

    async def until(self, code: int, failing: list[str], seconds: float = 30.0) -> dict[str, Any]:
        """
        Poll until C{/healthz} answers C{code} with the sections C{failing}
        named in its reasons.
        """
        deadline = time.monotonic() + seconds
        while True:
            status, report = await self.healthz()
            named = [reason.split(":")[0] for reason in report.get("reasons", [])]
            if (status, named) == (code, failing):
                return report
            self.assertLess(time.monotonic(), deadline, f"not {code} {failing} within {seconds} s: {status} {report}")
            await deferLater(reactor, 0.2, lambda: None)

    async def test_503_with_the_reason_while_unhealthy_and_200_once_it_clears(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(directory)
        vhost = Vhost().create()
        self.addCleanup(vhost.delete)
        port, broker_port = free_port(), free_port()
        (directory / "edge.toml").write_text(
            f'[edge]\nlisten = "tcp:{port}:interface=127.0.0.1"\ndata_dir = "{directory / "edge"}"\n'
            f'[link]\nurl = "{vhost.url(broker_port)}"\nunhealthy_after = 1\n'
            f"[uploads]\ndisk_reserve = {1 << 62}\n"
        )
        service = edge_service(load(EdgeConfig, directory / "edge.toml"), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.base = f"http://127.0.0.1:{port}"

        # The broker is out of reach and the spool's disk below its reserve.
        report = await self.until(503, ["link", "spool"], seconds=10)
        self.assertFalse(report["ok"])
        self.assertFalse(report["link"]["up"])
        self.assertGreater(report["link"]["down_for"], 1)
        self.assertIn("longer than link.unhealthy_after", report["link"]["reason"])
        self.assertIn("below uploads.disk_reserve", report["spool"]["reason"])
        self.assertTrue(report["database"]["ok"])

        # The broker comes within reach (with the cloud's queue, which the
        # edge writes to but may not declare), and the reserve is lowered.
        await _declare_cloud_queue(vhost)
        (uploads,) = [s for s in service if type(s).__name__ == "UploadService"]
        uploads.limits = dataclasses.replace(uploads.limits, disk_reserve=0)
        forwarder = _listen(broker_port)
        self.addCleanup(forwarder.stopListening)
        report = await self.until(200, [])
        self.assertEqual((report["ok"], report["link"]["up"], report["spool"]["ok"]), (True, True, True), report)

        # Another process holds the database locked: no write commits.
        locker = sqlite3.connect(directory / "edge" / "edge.db", timeout=0, isolation_level=None)
        self.addCleanup(locker.close)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            status, report = await self.healthz()
            self.assertEqual(status, 503, report)
            self.assertEqual([r.split(":")[0] for r in report["reasons"]], ["database"], report)
            self.assertFalse(report["database"]["ok"])
        finally:
            locker.execute("ROLLBACK")
        report = await self.until(200, [])
        self.assertTrue(report["database"]["ok"])


async def _declare_cloud_queue(vhost: Vhost) -> None:
    """
    Declare C{relay.to-cloud} in C{vhost}, as the cloud does when it starts.
    """
    link = LinkService(vhost.url(), reactor=reactor)
    link.startService()
    try:
        channel = await link.whenConnected().addTimeout(10, reactor)
        await channel.declare_destination(TO_CLOUD)
    finally:
        await link.stopService()


def _listen(port: int) -> Any:
    """
    Forward 127.0.0.1:C{port} to RabbitMQ.
    """
    return reactor.listenTCP(port, ProxyFactory("127.0.0.1", AMQP_PORT), interface="127.0.0.1")
