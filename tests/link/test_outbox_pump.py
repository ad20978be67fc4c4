"""
The outbox pump's states and decisions, without sockets: a fake channel
records what is published and the test plays the broker's confirms, nacks
and returns.  Time is a Clock; nothing sleeps.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relay.link import outbox
from relay.link.channel import LinkDown, ReturnedMessage
from relay.link.envelope import BUNDLE_TYPE
from relay.link.outbox import Outbox
from relay.metrics import Metrics
from relay.testing.db import SynchronousDatabase


class FakeChannel:
    """
    Records publishes; numbers them like a confirm-mode channel.
    """

    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes, dict[str, Any]]] = []
        self.declared: list[str] = []
        self.open = True
        self.on_ack: Any = None
        self.on_nack: Any = None
        self.on_return: Any = None

    def publish(self, exchange: str, routing_key: str, body: bytes, *, headers: Any = None,
                properties: Any = None, mandatory: bool = True) -> int:
        if not self.open:
            raise LinkDown("gone")
        self.published.append((exchange, routing_key, body, dict(properties or {})))
        return len(self.published)

    async def declare_destination(self, name: str) -> None:
        self.declared.append(name)

    def numbers(self) -> list[int]:
        """
        The messages published, in order; a bundle's one by one.
        """
        return [json.loads(line)["body"]["n"] for _, _, body, _ in self.published for line in body.split(b"\n")]


class PumpTests(SynchronousTestCase):
    """
    One message per publish (bundles of one), so that confirms name messages.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.db = SynchronousDatabase(Path(self.mktemp()), [outbox.SCHEMA])
        self.metrics = Metrics()
        self.outbox = Outbox(self.db, self.clock, self.metrics, source="edge:t", window=3, batch=2, bundle=1)  # type: ignore[arg-type]

    def put(self, *numbers: int, to: str = "relay.to-cloud", stream: str | None = None) -> None:
        for n in numbers:
            self.db.run_now(lambda c, n=n: self.outbox.put(c, "t", {"n": n}, to=to, stream=stream))
        self.outbox.wake()

    def depth(self) -> int:
        return int(self.db.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def test_down_until_attached(self) -> None:
        self.put(1, 2)
        self.assertEqual(self.outbox.state, "down")
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.assertEqual(self.outbox.state, "running")
        self.assertEqual(channel.numbers(), [1, 2])
        self.assertEqual(channel.published[0][:2], ("relay.to-cloud", "relay.to-cloud"))

    def test_window_bounds_in_flight(self) -> None:
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.put(*range(10))
        self.assertEqual(channel.numbers(), [0, 1, 2])
        self.assertEqual(self.outbox.in_flight, 3)
        channel.on_ack(2, True)  # acks 1 and 2
        self.assertEqual(channel.numbers(), [0, 1, 2, 3, 4])
        self.assertEqual(self.depth(), 8)

    def test_only_acked_messages_are_deleted(self) -> None:
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.put(1, 2, 3)
        channel.on_ack(2, False)
        self.assertEqual(self.depth(), 2)
        self.clock.advance(1)  # the depth is counted at most once a second
        self.assertEqual(self.outbox.depth, 2)
        self.assertEqual(self.metrics.counter("outbox_confirmed", "").value(), 1)

    def test_it_holds_a_message_until_its_confirm(self) -> None:
        ids = [self.db.run_now(lambda c, n=n: self.outbox.put(c, "t", {"n": n}, to="relay.to-cloud").id)
               for n in (1, 2)]
        self.assertEqual([self.db.run_now(self.outbox.holds, i) for i in ids], [True, True])
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.assertEqual([self.db.run_now(self.outbox.holds, i) for i in ids], [True, True], "published, unconfirmed")
        channel.on_ack(1, False)
        self.assertEqual([self.db.run_now(self.outbox.holds, i) for i in ids], [False, True])
        self.assertFalse(self.db.run_now(self.outbox.holds, "0" * 32))

    def test_reconnect_republishes_everything_unconfirmed_in_order(self) -> None:
        first = FakeChannel()
        self.outbox.attach(first)  # type: ignore[arg-type]
        self.put(1, 2, 3)
        first.on_ack(1, False)
        self.outbox.detach()
        self.assertEqual(self.outbox.state, "down")
        first.open = False
        second = FakeChannel()
        self.outbox.attach(second)  # type: ignore[arg-type]
        self.assertEqual(second.numbers(), [2, 3])

    def test_nack_publishes_again(self) -> None:
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.put(1, 2)
        channel.on_nack(1, False)
        self.assertEqual(channel.numbers(), [1, 2, 1])
        self.assertEqual(self.depth(), 2)

    def test_returned_message_is_kept_and_retried_later(self) -> None:
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.put(1)
        [(_, key, body, properties)] = channel.published
        channel.on_return(ReturnedMessage(312, "NO_ROUTE", key, key, body, {}, properties))
        channel.on_ack(1, False)  # RabbitMQ acks a returned message too
        self.assertEqual(self.depth(), 1)
        self.assertEqual(len(channel.published), 1)
        self.assertEqual(self.metrics.counter("outbox_returned", "").value(), 1)
        row = self.db.conn.execute("SELECT attempts, last_error FROM outbox").fetchone()
        self.assertEqual(tuple(row), (1, "312 NO_ROUTE"))
        self.clock.advance(5.0)
        self.assertEqual(channel.numbers(), [1, 1])

    def test_returned_message_is_retried_when_recording_the_return_fails(self) -> None:
        # The database refuses the update that records the return (as a
        # full disk would): the message must still be published again.
        self.db.conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON outbox BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.put(1)
        [(_, key, body, properties)] = channel.published
        channel.on_return(ReturnedMessage(312, "NO_ROUTE", key, key, body, {}, properties))
        channel.on_ack(1, False)
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.Error)), 1)
        row = self.db.conn.execute("SELECT attempts, last_error FROM outbox").fetchone()
        self.assertEqual(tuple(row), (0, None), "the return could not be recorded")
        self.clock.advance(5.0)
        self.assertEqual(channel.numbers(), [1, 1])

    def test_blocked_pauses_publishing(self) -> None:
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.outbox.set_blocked(True)
        self.assertEqual(self.outbox.state, "blocked")
        self.put(1, 2)
        self.assertEqual(channel.published, [])
        self.outbox.set_blocked(False)
        self.assertEqual(channel.numbers(), [1, 2])

    def test_streams_number_their_messages(self) -> None:
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.put(1, 2, stream="job:7")
        self.put(3, stream="job:8")
        seqs = [(json.loads(b)["stream"], json.loads(b)["seq"]) for _, _, b, _ in channel.published]
        self.assertEqual(seqs, [("job:7", 1), ("job:7", 2), ("job:8", 1)])

    def test_declares_each_destination_once_per_connection(self) -> None:
        self.outbox = Outbox(self.db, self.clock, Metrics(), source="cloud", declare_destinations=True)  # type: ignore[arg-type]
        channel = FakeChannel()
        self.outbox.attach(channel)  # type: ignore[arg-type]
        self.put(1, 2, to="relay.to-edge.a")
        self.put(3, to="relay.to-edge.b")
        self.assertEqual(channel.declared, ["relay.to-edge.a", "relay.to-edge.b"])
        again = FakeChannel()
        self.outbox.attach(again)  # type: ignore[arg-type]
        self.assertEqual(again.declared, ["relay.to-edge.a", "relay.to-edge.b"])

    def test_oldest_age(self) -> None:
        self.clock.advance(100)
        self.put(1)
        self.outbox.attach(FakeChannel())  # type: ignore[arg-type]
        self.clock.advance(7)
        self.assertEqual(self.outbox.oldest_age(), 7)


class BundleTests(SynchronousTestCase):
    """
    Messages waiting together for one queue go as one AMQP message.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.db = SynchronousDatabase(Path(self.mktemp()), [outbox.SCHEMA])
        self.metrics = Metrics()
        self.channel = FakeChannel()

    def pump(self, **kwargs: Any) -> Outbox:
        return Outbox(self.db, self.clock, self.metrics, source="edge:t", **kwargs)  # type: ignore[arg-type]

    def waiting(self, pump: Outbox, *numbers: int, to: str = "relay.to-cloud", pad: int = 0) -> None:
        """
        Commit messages while the pump has no channel: they wait together.
        """
        for n in numbers:
            self.db.run_now(lambda c, n=n: pump.put(c, "t", {"n": n, "pad": "x" * pad}, to=to))

    def kinds(self) -> list[tuple[str, int]]:
        return [(props["content_type"], len(body.split(b"\n"))) for _, _, body, props in self.channel.published]

    def depth(self) -> int:
        return int(self.db.conn.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def test_one_bundle_for_what_waits_and_alone_for_what_comes_alone(self) -> None:
        pump = self.pump()
        self.waiting(pump, 1, 2, 3)
        pump.attach(self.channel)  # type: ignore[arg-type]
        self.waiting(pump, 4)
        pump.wake()
        self.assertEqual(self.kinds(), [(BUNDLE_TYPE, 3), ("application/json", 1)])
        self.assertEqual(self.channel.numbers(), [1, 2, 3, 4])
        first_id = json.loads(self.channel.published[0][2].split(b"\n")[0])["id"]
        self.assertEqual(self.channel.published[0][3]["message_id"], first_id)
        self.assertEqual(pump.in_flight, 4)

    def test_bundles_split_at_their_limits_and_between_queues(self) -> None:
        pump = self.pump(bundle=3)
        self.waiting(pump, *range(7))
        self.waiting(pump, 7, 8, to="relay.to-edge.e1")
        self.waiting(pump, 9, 10, pad=60_000)  # two would pass BUNDLE_BYTES
        pump.attach(self.channel)  # type: ignore[arg-type]
        self.assertEqual(
            self.kinds(),
            [(BUNDLE_TYPE, 3), (BUNDLE_TYPE, 3), ("application/json", 1), (BUNDLE_TYPE, 2),
             ("application/json", 1), ("application/json", 1)],
        )
        self.assertEqual([key for _, key, _, _ in self.channel.published][3], "relay.to-edge.e1")
        self.assertEqual(self.channel.numbers(), list(range(11)))

    def test_a_message_with_a_payload_goes_alone(self) -> None:
        pump = self.pump()
        self.waiting(pump, 1)
        self.db.run_now(lambda c: pump.put(c, "t", {"n": 2}, to="relay.to-cloud", payload=b"\x00\n"))
        self.waiting(pump, 3, 4)
        pump.attach(self.channel)  # type: ignore[arg-type]
        self.assertEqual(
            self.kinds(), [("application/json", 1), ("application/octet-stream", 2), (BUNDLE_TYPE, 2)]
        )

    def test_the_window_counts_messages(self) -> None:
        pump = self.pump(window=5)
        self.waiting(pump, *range(12))
        pump.attach(self.channel)  # type: ignore[arg-type]
        self.assertEqual(self.kinds(), [(BUNDLE_TYPE, 5)])
        self.assertEqual(pump.in_flight, 5)
        self.channel.on_ack(1, False)
        self.assertEqual(self.kinds(), [(BUNDLE_TYPE, 5), (BUNDLE_TYPE, 5)])
        self.assertEqual(self.depth(), 7)
        self.assertEqual(self.metrics.counter("outbox_confirmed", "").value(), 5)

    def test_a_nacked_bundle_is_published_again_whole(self) -> None:
        pump = self.pump()
        self.waiting(pump, 1, 2, 3)
        pump.attach(self.channel)  # type: ignore[arg-type]
        self.channel.on_nack(1, False)
        self.assertEqual(self.channel.numbers(), [1, 2, 3, 1, 2, 3])
        self.assertEqual(self.depth(), 3)
        self.assertEqual(pump.in_flight, 3)

    def test_a_returned_bundle_waits_whole(self) -> None:
        pump = self.pump()
        self.waiting(pump, 1, 2, 3)
        pump.attach(self.channel)  # type: ignore[arg-type]
        [(_, key, body, properties)] = self.channel.published
        self.channel.on_return(ReturnedMessage(312, "NO_ROUTE", key, key, body, {}, properties))
        self.channel.on_ack(1, False)
        self.assertEqual(self.depth(), 3)
        self.assertEqual(self.metrics.counter("outbox_returned", "").value(), 3)
        rows = self.db.conn.execute("SELECT attempts, last_error FROM outbox").fetchall()
        self.assertEqual([tuple(r) for r in rows], [(1, "312 NO_ROUTE")] * 3)
        self.clock.advance(5.0)
        self.assertEqual(self.channel.numbers(), [1, 2, 3, 1, 2, 3])


class InterfaceTests(SynchronousTestCase):
    def test_outbox_and_its_fake_provide_the_interface(self) -> None:
        from zope.interface.verify import verifyObject

        from relay.link.outbox import IOutbox
        from relay.testing.sync import FakeOutbox

        db = SynchronousDatabase(Path(self.mktemp()), [outbox.SCHEMA])
        self.assertTrue(verifyObject(IOutbox, Outbox(db, Clock(), Metrics(), source="x")))  # type: ignore[arg-type]
        self.assertTrue(verifyObject(IOutbox, FakeOutbox("x", Clock())))  # type: ignore[arg-type]


class LostWhileDeclaring(FakeChannel):
    async def declare_destination(self, name: str) -> None:
        self.open = False
        raise LinkDown("connection lost during the declaration")


class DeclareLostTests(SynchronousTestCase):
    def test_a_connection_lost_while_declaring_waits_for_the_next_channel(self) -> None:
        clock = Clock()
        db = SynchronousDatabase(Path(self.mktemp()), [outbox.SCHEMA])
        pump = Outbox(db, clock, Metrics(), source="cloud", declare_destinations=True)  # type: ignore[arg-type]
        db.run_now(lambda c: pump.put(c, "t", {"n": 1}, to="relay.to-edge.e1"))
        lost = LostWhileDeclaring()
        pump.attach(lost)  # type: ignore[arg-type]
        # Nothing logged as a failure, no retry timer (only the depth count).
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual([c.func.__name__ for c in clock.getDelayedCalls()], ["count"])
        pump.detach()
        second = FakeChannel()
        pump.attach(second)  # type: ignore[arg-type]
        self.assertEqual(second.declared, ["relay.to-edge.e1"])
        self.assertEqual(second.numbers(), [1])


class SharedOutboxTests(SynchronousTestCase):
    """
    Several processes on one database (the cloud's PostgreSQL): a row is
    numbered when it is inserted but seen when its transaction commits, so
    a pump may read another process's higher-numbered row before this
    process's lower-numbered one commits, and carry its cursor past it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.db = SynchronousDatabase(Path(self.mktemp()), [outbox.SCHEMA])

    def late_commit(self, pump: Outbox) -> FakeChannel:
        channel = FakeChannel()
        pump.attach(channel)  # type: ignore[arg-type]
        # Another process's message, numbered 2 and committed first ...
        self.db.run_now(lambda c: pump.put(c, "t", {"n": 2}, to="relay.jobs"))
        self.db.conn.execute("UPDATE outbox SET position = 2")
        self.db.conn.commit()
        pump.wake()
        # ... then this process's, numbered 1 before it but committed after.
        self.db.run_now(lambda c: pump.put(c, "t", {"n": 1}, to="relay.jobs"))
        self.db.conn.execute("UPDATE outbox SET position = 1 WHERE position = 3")
        self.db.conn.commit()
        pump.wake()
        return channel

    def test_a_row_committed_late_is_published_by_the_next_rescan(self) -> None:
        pump = Outbox(self.db, self.clock, Metrics(), source="cloud", rescan_after=5.0)  # type: ignore[arg-type]
        channel = self.late_commit(pump)
        self.assertEqual(channel.numbers(), [2])
        self.clock.advance(5)
        self.assertEqual(channel.numbers(), [2, 1])
        channel.on_ack(2, True)
        self.clock.advance(5)  # nothing left: nothing published again
        self.assertEqual(channel.numbers(), [2, 1])
        pump.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_without_rescans_it_waits_for_the_next_connection(self) -> None:
        pump = Outbox(self.db, self.clock, Metrics(), source="cloud")  # type: ignore[arg-type]
        channel = self.late_commit(pump)
        self.clock.advance(60)
        self.assertEqual(channel.numbers(), [2])

    def test_another_process_message_is_published_by_it_or_taken_over_when_old(self) -> None:
        ours = Outbox(self.db, self.clock, Metrics(), source="cloud", rescan_after=5.0,  # type: ignore[arg-type]
                      takeover_after=10.0)
        theirs = Outbox(self.db, self.clock, Metrics(), source="cloud", rescan_after=5.0,  # type: ignore[arg-type]
                        takeover_after=10.0)
        ours_channel, theirs_channel = FakeChannel(), FakeChannel()
        ours.attach(ours_channel)  # type: ignore[arg-type]
        self.db.run_now(lambda c: theirs.put(c, "t", {"n": 1}, to="relay.jobs"))
        self.db.run_now(lambda c: ours.put(c, "t", {"n": 2}, to="relay.jobs"))
        ours.wake()
        self.assertEqual(ours_channel.numbers(), [2], "only its own while the other's is young")
        for _ in range(2):  # rescans, 5 and 10 s later
            self.clock.advance(5)
            self.assertEqual(ours_channel.numbers(), [2])
        # The other process never published it (gone, or cut off): once it
        # is older than 10 s, the next rescan takes it over.
        self.clock.advance(5)
        self.assertEqual(ours_channel.numbers(), [2, 1])
        ours_channel.on_ack(2, True)
        ours.stop()
        # A process alive publishes its own at once.
        self.db.run_now(lambda c: theirs.put(c, "t", {"n": 3}, to="relay.jobs"))
        theirs.attach(theirs_channel)  # type: ignore[arg-type]
        self.assertEqual(theirs_channel.numbers(), [3])
        theirs.stop()
