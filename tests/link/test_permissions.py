"""
etc/examples/rabbitmq-setup.sh against the real broker: an edge's user can do
its job (write to the cloud's inbox, read its own queue) and nothing else.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from relay.config import LinkConfig
from relay.db import Database
from relay.health import Health
from relay.link import inbox, outbox
from relay.link.backoff import Backoff
from relay.link.bridge import Bridge, build_link
from relay.link.catalogue import Catalogue
from relay.link.connection import LinkService
from relay.link.envelope import JOBS, TO_CLOUD, Envelope, to_edge
from relay.metrics import Metrics

from ..conftest import ROOT
from ._broker import PORT, sleep
from .test_exactly_once import COUNT, EFFECTS, record

SCRIPT = ROOT / "etc" / "examples" / "rabbitmq-setup.sh"


def ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


class EdgePermissionTests(unittest.TestCase):
    timeout = 120

    def setUp(self) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.vhost = f"relay-test-{suffix}"
        self.edge_id = f"perm-{suffix}"
        self.other_edge = f"other-{suffix}"
        self.password = uuid.uuid4().hex
        subprocess.run(
            ["bash", str(SCRIPT), self.password, f"{self.edge_id}:{self.password}",
             f"{self.other_edge}:{self.password}"],
            check=True, capture_output=True, timeout=120, env=dict(os.environ, RELAY_VHOST=self.vhost),
        )
        self.addCleanup(self._cleanup)

    def _cleanup(self) -> None:
        ctl("delete_vhost", self.vhost)
        for user in (f"edge-{self.edge_id}", f"edge-{self.other_edge}"):
            ctl("delete_user", user)

    def url(self, user: str) -> str:
        return f"amqp://{user}:{self.password}@127.0.0.1:{PORT}/{self.vhost}"

    def bridge(self, name: str, user: str, consume: str, declare: list[str], ensure: bool) -> Bridge:
        db = Database(reactor, Path(self.mktemp() + ".db"), [outbox.SCHEMA, inbox.SCHEMA, EFFECTS])
        catalogue = Catalogue()
        catalogue.register("test.count", COUNT)
        metrics = Metrics()
        bridge = build_link(
            LinkConfig(url=self.url(user), heartbeat=5), reactor, db, metrics, Health(reactor, name, metrics),
            catalogue, source=name, consume=consume, declare=declare, declare_destinations=ensure,
            backoff=Backoff(reactor, initial=0.05, cap=0.5),
        )
        bridge.inbox.register("test.count", record)
        db.startService()
        bridge.startService()
        self.addCleanup(db.stopService)
        self.addCleanup(bridge.stopService)
        bridge.db = db  # type: ignore[attr-defined]
        return bridge

    async def refused(self, user: str, attempt: object) -> str:
        """
        Connect as C{user}, try C{attempt(channel)}; return the broker's
        refusal.
        """
        service = LinkService(self.url(user), reactor=reactor, heartbeat=5, connection_name=f"perm-{uuid.uuid4().hex}")
        service.startService()
        try:
            channel = await service.whenConnected()
            try:
                await attempt(channel)  # type: ignore[operator]
            except Exception as e:
                return str(e)
            raise AssertionError("the broker allowed it")
        finally:
            await service.stopService()

    async def test_edge_does_its_job_and_nothing_else(self) -> None:
        # The cloud declares what exists in production: the jobs queue and
        # (lazily, here at once) other edges' queues.
        cloud = self.bridge("cloud", "relay-cloud", TO_CLOUD, [JOBS, to_edge(self.other_edge)], ensure=True)
        await cloud.link.whenConnected()
        edge = self.bridge(f"edge:{self.edge_id}", f"edge-{self.edge_id}", to_edge(self.edge_id), [], ensure=False)
        await edge.link.whenConnected()

        await edge.outbox.send("test.count", {"n": 1}, to=TO_CLOUD)
        await cloud.outbox.send("test.count", {"n": 2}, to=to_edge(self.edge_id))

        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM effect").fetchone()[0])

        applied = {"cloud": 0, "edge": 0}

        async def both() -> bool:
            applied["cloud"] = await cloud.db.read(count)  # type: ignore[attr-defined]
            applied["edge"] = await edge.db.read(count)  # type: ignore[attr-defined]
            return applied == {"cloud": 1, "edge": 1}

        for _ in range(200):
            if await both():
                break
            await sleep(0.05)
        self.assertEqual(applied, {"cloud": 1, "edge": 1})

        user = f"edge-{self.edge_id}"
        body = Envelope("test.count", "x", 0.0, {"n": 3}).to_bytes()

        async def publish_to_jobs(channel):  # type: ignore[no-untyped-def]
            channel.publish("relay.jobs", "relay.jobs", body)
            await channel.declare_quorum_queue(to_edge(self.edge_id))  # the refusal arrives first

        async def publish_default(channel):  # type: ignore[no-untyped-def]
            channel.publish("", TO_CLOUD, body)
            await channel.declare_quorum_queue(to_edge(self.edge_id))

        async def read_other(channel):  # type: ignore[no-untyped-def]
            await channel.consume(to_edge(self.other_edge), lambda d: None)

        async def delete_inbox(channel):  # type: ignore[no-untyped-def]
            await channel.delete_queue(TO_CLOUD)

        for attempt in (publish_to_jobs, publish_default, read_other, delete_inbox):
            refusal = await self.refused(user, attempt)
            self.assertIn("ACCESS_REFUSED", refusal, attempt.__name__)
