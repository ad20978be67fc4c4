"""
The link's promise, against the real RabbitMQ: under connections killed at
random (by the broker and by the link emulator resetting the socket), and
across a broker restart, every message's effect is applied exactly once in
each direction.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from relay.config import LinkConfig
from relay.db import Database, Schema
from relay.health import Health
from relay.link import deadletters, inbox, outbox
from relay.link.backoff import Backoff
from relay.link.bridge import build_link
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope
from relay.metrics import Metrics
from relay.testing.linkemu import LinkEmulator

from ._broker import (
    PORT,
    URL,
    VHOST,
    close_connections_named,
    delete_queue,
    sleep,
    unique,
    wait_for,
)
from ._privatebroker import VHOST as PRIVATE_VHOST
from ._privatebroker import PrivateBroker

EFFECTS = Schema(
    "test_effects",
    ["CREATE TABLE effect (source TEXT NOT NULL, n INTEGER NOT NULL, stream_seq INTEGER);"],
)

COUNT = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}, "additionalProperties": False}


def record(conn: sqlite3.Connection, message: Envelope) -> None:
    conn.execute(
        "INSERT INTO effect (source, n, stream_seq) VALUES (?, ?, ?)",
        (message.source, message.body["n"], message.seq),
    )


def effects(conn: sqlite3.Connection) -> tuple[int, int, list[int]]:
    total, distinct = conn.execute("SELECT count(*), count(DISTINCT n) FROM effect").fetchone()
    order = [row[0] for row in conn.execute("SELECT n FROM effect ORDER BY rowid")]
    return int(total), int(distinct), order


class Side:
    """
    One process's end: its database, metrics and bridge.
    """

    def __init__(self, tmp: Path, name: str, url: str, consume: str, peer: str) -> None:
        self.name = name
        self.db = Database(reactor, tmp / f"{name}.db", [outbox.SCHEMA, inbox.SCHEMA, EFFECTS])
        catalogue = Catalogue()
        catalogue.register("test.count", COUNT)
        metrics = Metrics()
        self.bridge = build_link(
            LinkConfig(url=url, heartbeat=2), reactor, self.db, metrics, Health(reactor, name, metrics), catalogue,
            source=name, consume=consume, declare=[peer],
            backoff=Backoff(reactor, initial=0.05, cap=0.5, healthy_after=2.0), window=500,
        )
        self.bridge.inbox.register("test.count", record)
        self.peer = peer

    def start(self) -> None:
        self.db.startService()
        self.bridge.startService()

    async def stop(self) -> None:
        await self.bridge.stopService()
        await self.db.stopService()

    async def send_batch(self, numbers: range, stream: str | None = None) -> None:
        def put_all(conn: sqlite3.Connection) -> None:
            for n in numbers:
                self.bridge.outbox.put(conn, "test.count", {"n": n}, to=self.peer, stream=stream)

        await self.db.run(put_all)
        self.bridge.outbox.wake()

    async def effects(self) -> tuple[int, int, list[int]]:
        return await self.db.read(effects)


class ExactlyOnceTests(unittest.TestCase):
    timeout = 240

    async def _setUp(self, broker: PrivateBroker | None = None) -> None:
        """
        Two sides on the machine's broker (in the link tests' vhost), or on
        C{broker}; the edge's connection goes through the link emulator.
        """
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        self.to_cloud, self.to_edge = unique("to-cloud"), unique("to-edge")
        self.private = broker
        port, vhost = (PORT, VHOST) if broker is None else (broker.port, PRIVATE_VHOST)
        self.emulator = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{port}")
        await self.emulator.start()
        self.edge = Side(
            tmp, unique("edge"), f"amqp://guest:guest@127.0.0.1:{self.emulator.port}/{vhost}",
            consume=self.to_edge, peer=self.to_cloud,
        )
        self.cloud = Side(
            tmp, unique("cloud"), f"amqp://guest:guest@127.0.0.1:{port}/{vhost}",
            consume=self.to_cloud, peer=self.to_edge,
        )
        self.edge.start()
        self.cloud.start()
        self.addCleanup(self._tearDown)

    async def _tearDown(self) -> None:
        await self.edge.stop()
        await self.cloud.stop()
        await self.emulator.stop()
        if self.private is not None:
            return  # its node and its files are removed whole
        for queue in (self.to_cloud, self.to_edge):
            try:
                await delete_queue(queue)
            except RuntimeError:
                pass

    async def _faults(self, until: Deferred[Any], rng: random.Random, kinds: list[str]) -> dict[str, int]:
        """
        Kill connections at random every 0.5 to 2 s until C{until} fires.
        """
        done: list[bool] = []
        until.addBoth(lambda r: done.append(True) or r)
        injected = {kind: 0 for kind in kinds}
        while not done:
            await sleep(rng.uniform(0.5, 2.0))
            if done:
                break
            kind = rng.choice(kinds)
            if kind == "emulator":
                self.emulator.reset_all()
            else:
                name = self.edge.name if rng.random() < 0.5 else self.cloud.name
                await close_connections_named(name)
            injected[kind] += 1
        return injected

    async def _converge(self, n: int, timeout: float) -> None:
        async def complete(side: Side) -> bool:
            total, _, _ = await side.effects()
            return total >= n

        waited = 0.0
        while not (await complete(self.edge) and await complete(self.cloud)):
            if waited > timeout:
                raise AssertionError(
                    f"not converged after {timeout}s: edge {(await self.edge.effects())[:2]}, "
                    f"cloud {(await self.cloud.effects())[:2]}"
                )
            await sleep(0.25)
            waited += 0.25
        # Anything applied twice would show up a moment later: wait for the
        # outboxes to drain, then look again.
        await self.edge.bridge.drained()
        await self.cloud.bridge.drained()
        await sleep(1.0)

    def _assert_exactly_once(self, side: tuple[int, int, list[int]], n: int) -> None:
        total, distinct, order = side
        self.assertEqual((total, distinct), (n, n))
        self.assertEqual(sorted(order), list(range(n)))

    async def test_ten_thousand_each_way_under_connection_kills(self) -> None:
        await self._setUp()
        n = 10_000
        rng = random.Random(20261126)
        finished: Deferred[None] = Deferred()
        faults = Deferred.fromCoroutine(self._faults(finished, rng, ["emulator", "broker"]))
        # Spread over about ten seconds, so that the faults (every 0.5-2 s)
        # land while messages are in flight, however fast the link is.
        for start in range(0, n, 250):
            await self.edge.send_batch(range(start, start + 250))
            await self.cloud.send_batch(range(start, start + 250))
            await sleep(0.25)
        await self._converge(n, timeout=150)
        finished.callback(None)
        injected = await faults
        self.assertGreater(sum(injected.values()), 4, injected)
        self._assert_exactly_once(await self.edge.effects(), n)
        self._assert_exactly_once(await self.cloud.effects(), n)
        self.assertGreater(self.edge.bridge.link.health.reconnects, 0)

    async def test_streams_apply_in_order_under_resets(self) -> None:
        """
        Messages of one stream are applied in sequence order even when
        republishing after a reset delivers them again or out of order.
        """
        await self._setUp()
        n = 3000
        finished: Deferred[None] = Deferred()
        faults = Deferred.fromCoroutine(self._faults(finished, random.Random(7), ["emulator"]))
        for start in range(0, n, 300):
            await self.edge.send_batch(range(start, start + 300), stream="job:1")
            await self.cloud.send_batch(range(start, start + 300), stream="sync:edge")
            await sleep(0.2)
        await self._converge(n, timeout=120)
        finished.callback(None)
        await faults
        for side in (self.edge, self.cloud):
            total, distinct, order = await side.effects()
            self.assertEqual((total, distinct), (n, n))
            self.assertEqual(order, list(range(n)))

    async def test_broker_restart_mid_run(self) -> None:
        # A node of the test's own: stopping the machine's broker would cut
        # the connections of every other test running meanwhile.
        broker = PrivateBroker()
        await deferToThread(broker.start)
        self.addCleanup(deferToThread, broker.stop)
        await self._setUp(broker)
        n = 4000
        await self.edge.send_batch(range(0, n // 2))
        await self.cloud.send_batch(range(0, n // 2))
        await deferToThread(broker.halt)
        try:
            # Committed while the broker is away: safe in the outbox.
            await self.edge.send_batch(range(n // 2, n))
            await self.cloud.send_batch(range(n // 2, n))
            await sleep(1.0)
        finally:
            await deferToThread(broker.start)
        await self._converge(n, timeout=120)
        self._assert_exactly_once(await self.edge.effects(), n)
        self._assert_exactly_once(await self.cloud.effects(), n)


class PoisonTests(unittest.TestCase):
    """
    Poison messages go to the dead letters and never block the queue.
    """

    timeout = 60

    async def test_poison_is_dead_lettered_and_the_rest_flows(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        to_cloud, to_edge = unique("to-cloud"), unique("to-edge")
        url = URL
        cloud = Side(tmp, unique("cloud"), url, consume=to_cloud, peer=to_edge)
        failures: list[int] = []

        def sometimes_fails(conn: sqlite3.Connection, message: Envelope) -> None:
            if message.body["n"] == 13:
                failures.append(13)
                raise RuntimeError("unlucky")
            record(conn, message)

        cloud.bridge.inbox._handlers["test.count"] = sometimes_fails
        cloud.start()
        self.addCleanup(cloud.stop)
        channel = await cloud.bridge.link.whenConnected()
        good = [Envelope("test.count", "t", 0.0, {"n": n}).to_bytes() for n in range(20)]
        poison = [
            b"\xff\xfe not json",
            b'{"id": "x"}',
            Envelope("nobody.knows", "t", 0.0, {}).to_bytes(),
            Envelope("test.count", "t", 0.0, {"n": "not a number"}).to_bytes(),
        ]
        for body in poison + good:
            channel.publish("", to_cloud, body)
        await wait_for(lambda: cloud.bridge.inbox.dead_letters >= 5, timeout=30)
        await wait_for(lambda: len(failures) >= 5, timeout=30)
        total, distinct, _ = await cloud.effects()
        self.assertEqual((total, distinct), (19, 19))
        rows = await cloud.db.read(deadletters.listing)
        reasons = sorted(row["reason"] for row in rows)
        self.assertEqual(len(rows), 5)
        self.assertTrue(any("not JSON" in r for r in reasons), reasons)
        self.assertTrue(any("unknown message type 'nobody.knows'" in r for r in reasons), reasons)
        self.assertTrue(any("not of type 'integer'" in r for r in reasons), reasons)
        self.assertTrue(any("handler failed 5 times" in r for r in reasons), reasons)

        # The operator fixes the cause and replays the handler failure.
        cloud.bridge.inbox._handlers["test.count"] = record
        [unlucky] = [row["number"] for row in rows if "handler failed" in row["reason"]]
        self.assertEqual(await cloud.db.run(deadletters.request_replay, [unlucky]), 1)
        await wait_for(lambda: cloud.bridge.inbox.dead_letters == 4, timeout=10)
        total, distinct, _ = await cloud.effects()
        self.assertEqual((total, distinct), (20, 20))
        await delete_queue(to_cloud)
        await delete_queue(to_edge)
