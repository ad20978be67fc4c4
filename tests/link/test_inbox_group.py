"""
The inbox's group commit: deliveries that arrive while a transaction commits
share the next one, and each still gets its own outcome.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relay.db import Schema
from relay.link import deadletters, inbox
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope
from relay.link.inbox import Inbox
from relay.metrics import Metrics
from relay.testing.db import SynchronousDatabase

R = TypeVar("R")

EFFECT = Schema("effect", ["CREATE TABLE effect (n INTEGER NOT NULL);"])


class HeldDatabase(SynchronousDatabase):
    """
    A synchronous database that, while C{holding}, queues units of work
    until L{release}: the deliveries received meanwhile wait for the
    transaction in progress, as they do while a real one syncs to disk.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, [inbox.SCHEMA, EFFECT])
        self.holding = False
        self._held: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        if not self.holding:
            return super().run(work, *args)
        done: Deferred[R] = Deferred()
        self._held.append((work, args, done))
        return done

    def release(self) -> None:
        self.holding = False
        held, self._held = self._held, []
        for work, args, done in held:
            super().run(work, *args).chainDeferred(done)


def message(n: int, stream: str | None = None, seq: int | None = None) -> Envelope:
    return Envelope("t", "edge:a", 0.0, {"n": n}, stream=stream, seq=seq)


class InboxCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.db = HeldDatabase(Path(self.mktemp()))
        catalogue = Catalogue()
        catalogue.register("t", {"type": "object", "properties": {"n": {"type": "integer"}}})
        self.metrics = Metrics()
        self.clock = Clock()
        self.inbox = Inbox(self.db, self.clock, catalogue, self.metrics, queue="q", max_attempts=2)  # type: ignore[arg-type]
        self.calls: list[int] = []

        def handler(conn: sqlite3.Connection, m: Envelope) -> None:
            self.calls.append(m.body["n"])
            conn.execute("INSERT INTO effect (n) VALUES (?)", (m.body["n"],))
            if m.body["n"] < 0:
                raise RuntimeError("poison")

        self.inbox.register("t", handler)

    def receive(self, m: Envelope) -> Deferred[str]:
        return self.inbox.receive(m.to_bytes())

    def group(self, *messages: Envelope) -> list[str]:
        """
        Receive C{messages} while a transaction is in progress (a group of
        one, for a message that is not among them), so that they share the
        next transaction; return their outcomes.
        """
        self.db.holding = True
        first = self.receive(message(1000 + len(self.calls)))
        received = [self.receive(m) for m in messages]
        for d in received:
            self.assertNoResult(d)
        self.db.release()
        self.assertEqual(self.successResultOf(first), "applied")
        return [self.successResultOf(d) for d in received]

    def effects(self) -> list[int]:
        return sorted(n for (n,) in self.db.conn.execute("SELECT n FROM effect WHERE n < 1000"))



class GroupTests(InboxCase):
    def test_duplicates_and_a_failing_handler_in_a_group(self) -> None:
        one, two, three, four, five, poison = (message(n) for n in (1, 2, 3, 4, 5, -1))
        self.assertEqual(self.group(one), ["applied"])
        outcomes = self.group(one, two, poison, three, two)
        # Each applied once; the failing one undid its own insert only.
        self.assertEqual(outcomes, ["duplicate", "applied", "retry", "applied", "duplicate"])
        self.assertEqual(self.effects(), [1, 2, 3])
        failures = self.db.conn.execute("SELECT id, attempts FROM inbox_failure").fetchall()
        self.assertEqual([tuple(row) for row in failures], [(poison.id, 1)])

        # Redelivered beside others: its second failure buries it.
        outcomes = self.group(four, poison, three, five)
        self.assertEqual(outcomes, ["applied", "dead", "duplicate", "applied"])
        self.assertEqual(self.effects(), [1, 2, 3, 4, 5])
        dead = self.db.run_now(deadletters.listing)
        self.assertEqual([row["message_id"] for row in dead], [poison.id])
        self.assertIn("handler failed 2 times; last: RuntimeError: poison", dead[0]["reason"])
        self.assertEqual(self.db.conn.execute("SELECT count(*) FROM inbox_failure").fetchone()[0], 0)
        seen = {row[0] for row in self.db.conn.execute("SELECT id FROM inbox_seen")}
        self.assertNotIn(poison.id, seen)
        self.assertEqual(self.metrics.counter("inbox_applied", "").value(), len(seen))

    def test_a_message_that_failed_before_is_cleared_when_applied(self) -> None:
        flaky = message(7)
        broken = {"on": True}

        def handler(conn: sqlite3.Connection, m: Envelope) -> None:
            if broken["on"] and m.id == flaky.id:
                raise RuntimeError("not yet")
            conn.execute("INSERT INTO effect (n) VALUES (?)", (m.body["n"],))

        self.inbox._handlers["t"] = handler
        self.assertEqual(self.group(message(6), flaky), ["applied", "retry"])
        self.assertEqual(self.db.conn.execute("SELECT count(*) FROM inbox_failure").fetchone()[0], 1)
        broken["on"] = False
        self.assertEqual(self.group(flaky, message(8)), ["applied", "applied"])
        self.assertEqual(self.effects(), [6, 7, 8])
        self.assertEqual(self.db.conn.execute("SELECT count(*) FROM inbox_failure").fetchone()[0], 0)

    def test_a_stream_in_one_group(self) -> None:
        first, second, third, fourth = (message(n, "s", n) for n in (1, 2, 3, 4))
        outcomes = self.group(third, second, first, second, fourth)
        self.assertEqual(outcomes, ["held", "held", "applied", "duplicate", "applied"])
        self.assertEqual([n for n in self.calls if n < 1000], [1, 2, 3, 4])
        self.assertEqual(self.effects(), [1, 2, 3, 4])

    def test_a_failing_stream_message_holds_its_stream_back(self) -> None:
        outcomes = self.group(message(2, "s", 2), message(-1, "s", 1), message(9))
        self.assertEqual(outcomes, ["held", "retry", "applied"])
        self.assertEqual(self.effects(), [9])
        held = self.db.conn.execute("SELECT stream, seq FROM inbox_held").fetchall()
        self.assertEqual([tuple(row) for row in held], [("s", 2)])


    def test_a_group_stops_at_its_bytes(self) -> None:
        sizes: list[int] = []
        apply_group = self.inbox._apply_group

        def recorded(conn: sqlite3.Connection, group: list[tuple[bytes, bytes | None]]) -> Any:
            sizes.append(len(group))
            return apply_group(conn, group)

        self.inbox._apply_group = recorded  # type: ignore[method-assign]
        big = [Envelope("t", "edge:a", 0.0, {"n": n, "pad": "x" * (3 << 20)}) for n in range(5)]
        self.assertEqual(self.group(*big, message(6)), ["applied"] * 6)
        # The first message's group of one, then at most 8 MiB at a time.
        self.assertEqual(sizes, [1, 3, 3])
        self.assertEqual(self.effects(), [0, 1, 2, 3, 4, 6])
