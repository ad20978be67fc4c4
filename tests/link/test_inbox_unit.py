"""
The inbox's decisions without a broker: duplicates, stream order, poison.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relay.db import Schema
from relay.link import deadletters, inbox
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope
from relay.link.inbox import Inbox
from relay.metrics import Metrics
from relay.testing import sync
from relay.testing.db import SynchronousDatabase

SEEN = Schema("seen", ["CREATE TABLE seen (n INTEGER NOT NULL);"])


def message(n: int, stream: str | None = None, seq: int | None = None, id: str | None = None) -> Envelope:
    extra = {"id": id} if id else {}
    return Envelope("t", "edge:a", 0.0, {"n": n}, stream=stream, seq=seq, **extra)  # type: ignore[arg-type]


class InboxWorld(SynchronousTestCase):
    """
    An inbox with one type, C{t}, whose handler fails on negative numbers.
    """

    def setUp(self) -> None:
        self.db = SynchronousDatabase(Path(self.mktemp()), [inbox.SCHEMA, SEEN])
        catalogue = Catalogue()
        catalogue.register("t", {"type": "object", "properties": {"n": {"type": "integer"}}})
        self.applied: list[int] = []
        self.inbox = Inbox(self.db, Clock(), catalogue, Metrics(), queue="q", max_attempts=2)  # type: ignore[arg-type]

        def handler(conn: sqlite3.Connection, m: Envelope) -> None:
            if m.body["n"] < 0:
                raise RuntimeError("negative")
            conn.execute("INSERT INTO seen (n) VALUES (?)", (m.body["n"],))
            self.applied.append(m.body["n"])

        self.inbox.register("t", handler)

    def receive(self, m: Envelope) -> str:
        return self.successResultOf(self.inbox.receive(m.to_bytes()))


class InboxTests(InboxWorld):
    def test_duplicate_is_ignored(self) -> None:
        m = message(1)
        self.assertEqual(self.receive(m), "applied")
        self.assertEqual(self.receive(m), "duplicate")
        self.assertEqual(self.applied, [1])

    def test_stream_holds_until_the_gap_fills(self) -> None:
        self.assertEqual(self.receive(message(3, "s", 3)), "held")
        self.assertEqual(self.receive(message(2, "s", 2)), "held")
        self.assertEqual(self.applied, [])
        self.assertEqual(self.receive(message(1, "s", 1)), "applied")
        self.assertEqual(self.applied, [1, 2, 3])
        self.assertEqual(self.receive(message(2, "s", 2)), "duplicate")
        self.assertEqual(self.receive(message(4, "s", 4)), "applied")
        self.assertEqual(self.applied, [1, 2, 3, 4])

    def test_failing_handler_retries_then_dead_letters(self) -> None:
        m = message(-1)
        self.assertEqual(self.receive(m), "retry")
        self.assertEqual(self.receive(m), "dead")
        rows = self.db.run_now(deadletters.listing)
        self.assertEqual(len(rows), 1)
        self.assertIn("handler failed 2 times; last: RuntimeError: negative", rows[0]["reason"])
        self.assertEqual(self.db.conn.execute("SELECT count(*) FROM seen").fetchone()[0], 0)

    def test_handler_failure_changes_nothing(self) -> None:
        def half(conn: sqlite3.Connection, m: Envelope) -> None:
            conn.execute("INSERT INTO seen (n) VALUES (99)")
            raise RuntimeError("half-done")

        self.inbox._handlers["t"] = half
        self.assertEqual(self.receive(message(5)), "retry")
        self.assertEqual(self.db.conn.execute("SELECT count(*) FROM seen").fetchone()[0], 0)
        self.assertEqual(self.db.conn.execute("SELECT count(*) FROM inbox_seen").fetchone()[0], 0)

    def test_poison_never_reaches_a_handler(self) -> None:
        for body in [b"", b"[]", b'{"id": 1}', Envelope("zz", "a", 0.0, {}).to_bytes(),
                     Envelope("t", "a", 0.0, {"n": "x"}).to_bytes()]:
            self.assertEqual(self.successResultOf(self.inbox.receive(body)), "dead")
        self.assertEqual(self.applied, [])
        self.assertEqual(len(self.db.run_now(deadletters.listing)), 5)


class Settlements:
    """
    Stands in for a channel: records how deliveries were settled.
    """

    def __init__(self) -> None:
        self.settled: list[tuple[str, int]] = []

    def ack(self, tag: int) -> None:
        self.settled.append(("ack", tag))

    def nack(self, tag: int, requeue: bool = True) -> None:
        self.settled.append(("nack", tag))


class BundleTests(InboxWorld):
    """
    A bundle (several envelopes in one delivery, one per line): each message
    has its own outcome, and the delivery is settled once for all.
    """

    def deliver_bundle(self, tag: int, *bodies: bytes) -> list[tuple[str, int]]:
        from relay.link.channel import Delivery
        from relay.link.envelope import BUNDLE_TYPE

        channel = Settlements()
        delivery = Delivery(
            b"\n".join(bodies), {}, {"content_type": BUNDLE_TYPE}, tag, False, "q", "q", "c",
            channel,  # type: ignore[arg-type]
        )
        self.inbox.deliver(delivery)
        return channel.settled

    def test_each_message_applied_once_and_the_bundle_acked_once(self) -> None:
        first, second = message(1), message(2)
        self.assertEqual(self.receive(first), "applied")
        poison = Envelope("zz", "edge:a", 0.0, {}).to_bytes()
        settled = self.deliver_bundle(7, first.to_bytes(), poison, second.to_bytes(), b"not json")
        self.assertEqual(settled, [("ack", 7)])
        self.assertEqual(self.applied, [1, 2])
        self.assertEqual(len(self.db.run_now(deadletters.listing)), 2)

    def test_a_failing_handler_requeues_the_bundle_and_the_rest_is_not_applied_twice(self) -> None:
        bodies = [message(1).to_bytes(), message(-1).to_bytes(), message(2).to_bytes()]
        self.assertEqual(self.deliver_bundle(1, *bodies), [("nack", 1)])
        self.assertEqual(self.applied, [1, 2])
        # Redelivered: the failing one's second failure buries it (max 2).
        self.assertEqual(self.deliver_bundle(2, *bodies), [("ack", 2)])
        self.assertEqual(self.applied, [1, 2])
        self.assertEqual(self.db.conn.execute("SELECT count(*) FROM seen").fetchone()[0], 2)
        [dead] = self.db.run_now(deadletters.listing)
        self.assertIn("handler failed 2 times", dead["reason"])

    def test_stream_order_holds_across_a_bundle(self) -> None:
        bodies = [message(n, "s", n).to_bytes() for n in (2, 3, 1)]
        self.assertEqual(self.deliver_bundle(1, *bodies), [("ack", 1)])
        self.assertEqual(self.applied, [1, 2, 3])


class InterfaceTests(SynchronousTestCase):
    """
    The inbox and its fake are one seam: both provide L{inbox.IInbox}, and
    both refuse a type the catalogue lacks or a second handler for a type.
    """

    def inboxes(self) -> list[object]:
        db = SynchronousDatabase(Path(self.mktemp()), [inbox.SCHEMA, sync.SCHEMA])
        catalogue = Catalogue()
        catalogue.register("t", {"type": "object"})
        return [
            Inbox(db, Clock(), catalogue, Metrics(), queue="q"),  # type: ignore[arg-type]
            sync.FakeInbox(db, catalogue),  # type: ignore[arg-type]
        ]

    def test_the_inbox_and_its_fake_provide_the_interface(self) -> None:
        for box in self.inboxes():
            self.assertTrue(verifyObject(inbox.IInbox, box))

    def test_both_refuse_what_the_real_one_refuses(self) -> None:
        for box in self.inboxes():
            assert isinstance(box, (Inbox, sync.FakeInbox))
            with self.assertRaises(ValueError):
                box.register("not.in.the.catalogue", lambda conn, m: None)
            box.register("t", lambda conn, m: None)
            with self.assertRaises(ValueError):
                box.register("t", lambda conn, m: None)
