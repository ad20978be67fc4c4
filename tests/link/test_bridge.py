"""
The bridge's reactions to the broker, against the real RabbitMQ: a consumer
cancelled by the broker (its queue deleted) subscribes again; the health
section reports the link.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.internet.task import LoopingCall
from twisted.trial import unittest

from relay.link.envelope import Envelope

from ._broker import (
    URL,
    VHOST,
    close_connections_named,
    delete_queue,
    rabbitmqctl,
    sleep,
    unique,
    wait_for,
)
from .test_exactly_once import Side


class BridgeTests(unittest.TestCase):
    timeout = 60

    async def test_consumer_cancelled_by_the_broker_resubscribes(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        consume = unique("cancelled")
        side = Side(tmp, unique("side"), URL, consume=consume, peer=consume)
        side.start()
        self.addCleanup(side.stop)
        self.addCleanup(lambda: delete_queue(consume))
        channel = await side.bridge.link.whenConnected()
        reconnects = side.bridge.link.health.reconnects

        await delete_queue(consume)

        async def subscribed_again() -> bool:
            listing = await rabbitmqctl("list_queues", "-p", VHOST, "name", "consumers")
            return f"{consume}\t1" in listing

        for _ in range(100):
            if await subscribed_again():
                break
            await sleep(0.1)
        self.assertTrue(await subscribed_again())
        # The same connection carried on: a re-subscription, not a reconnect.
        self.assertIs(side.bridge.link.channel, channel)
        self.assertEqual(side.bridge.link.health.reconnects, reconnects)

        channel.publish(consume, consume, Envelope("test.count", "t", 0.0, {"n": 1}).to_bytes())

        def applied(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM effect").fetchone()[0])

        for _ in range(100):
            if await side.db.read(applied) == 1:
                break
            await sleep(0.05)
        self.assertEqual(await side.db.read(applied), 1)

    async def test_health_section(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        queue = unique("health")
        side = Side(tmp, unique("side"), URL, consume=queue, peer=queue)
        report = side.bridge.report()
        self.assertEqual(report["up"], False)
        self.assertEqual(report["outbox"]["state"], "down")
        side.db.startService()
        await side.send_batch(range(3))  # committed while the link is down
        side.bridge.startService()
        self.addCleanup(side.stop)
        self.addCleanup(lambda: delete_queue(queue))
        await side.bridge.link.whenConnected()
        await wait_for(lambda: side.bridge.report()["outbox"]["depth"] == 0, timeout=10)
        report = side.bridge.report()
        self.assertEqual((report["up"], report["outbox"]["state"], report["dead_letters"]), (True, "running", 0))

    async def test_up_hooks_run_once_the_link_counts_as_up(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        queue = unique("up")
        name = unique("side")
        side = Side(tmp, name, URL, consume=queue, peer=queue)
        seen: list[tuple[bool, bool]] = []
        side.bridge.when_up(lambda: seen.append((side.bridge.link.health.connected, side.bridge.report()["up"])))
        side.start()
        self.addCleanup(side.stop)
        self.addCleanup(lambda: delete_queue(queue))
        await side.bridge.link.whenConnected()
        self.assertEqual(seen, [(True, True)])
        # And again after the broker closes the connection.
        await close_connections_named(name)
        await wait_for(lambda: len(seen) == 2, timeout=20)
        self.assertEqual(seen, [(True, True), (True, True)])

    async def test_link_state_for_the_status_bar(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        queue = unique("state")
        name = unique("side")
        side = Side(tmp, name, URL, consume=queue, peer=queue)
        state, since = side.bridge.link_state()
        self.assertEqual(state, "down")
        self.assertIsNotNone(since)
        side.start()
        self.addCleanup(side.stop)
        self.addCleanup(lambda: delete_queue(queue))
        await side.bridge.link.whenConnected()
        state, up_since = side.bridge.link_state()
        self.assertEqual(state, "up")
        self.assertIsNotNone(up_since)
        # The broker closes the connection: down (or already connecting
        # again) since then, then up again with a later 'since'. The first
        # reconnect may come after a few milliseconds (full jitter), before
        # rabbitmqctl has even returned: so every state is sampled from
        # before the close, on each turn of the reactor.
        seen: list[tuple[str, float | None]] = []
        sampler = LoopingCall(lambda: seen.append(side.bridge.link_state()))
        sampler.start(0)
        self.addCleanup(lambda: sampler.running and sampler.stop())
        self.assertEqual(await close_connections_named(name), 1)
        await wait_for(lambda: side.bridge.link_state() != ("up", up_since), timeout=10)
        await wait_for(lambda: side.bridge.link_state()[0] == "up", timeout=20)
        sampler.stop()
        down = [(state, since) for state, since in seen if state != "up"]
        self.assertTrue(down, "the status bar never showed the link down")
        self.assertEqual({state for state, _ in down} - {"down", "connecting"}, set())
        self.assertNotIn(None, [since for _, since in down])
        self.assertGreater(side.bridge.link_state()[1], up_since)
