"""
Fakes for the link as the registry and the replica use it, and an
in-process "broker" that moves messages between them with the faults the
real link has: duplicates, reordering, restarts, and (for an edge whose
queue was lost) messages that never arrive.

  - L{FakeOutbox} provides L{IOutbox}: C{put} writes the message to a table
    in the caller's transaction, so a rolled-back transaction sends nothing,
    exactly like the real outbox.
  - L{FakeInbox} provides L{IInbox}: it records each message id with the
    handler's effect in one transaction and ignores a message seen before,
    like the real inbox.
  - L{FakeLink} provides L{ILinkEnd} with those two: what the
    components' builders take in place of the real L{Bridge}.
  - L{InProcessLink} carries committed messages from every outbox to the
    inbox of the queue they are addressed to.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from relay.db import Database, Schema
from relay.link.bridge import ILinkEnd
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope
from relay.replication import IInbox, IOutbox

SCHEMA = Schema(
    "fake_link",
    [
        """
        CREATE TABLE fake_outbox (
            position INTEGER PRIMARY KEY,
            queue TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE TABLE fake_outbox_stream (
            stream TEXT PRIMARY KEY,
            last_seq INTEGER NOT NULL
        );
        CREATE TABLE fake_inbox_seen (
            id TEXT PRIMARY KEY
        );
        """,
    ],
)

Handler = Callable[[Any, Envelope], None]


@implementer(IOutbox)
class FakeOutbox:
    """
    A transactional outbox without a broker: L{take} hands over what was
    committed.
    """

    def __init__(self, source: str, clock: IReactorTime) -> None:
        self.source = source
        self._clock = clock
        self.wakes = 0

    def put(
        self, conn: Any, type: str, body: dict[str, Any], *, to: str, stream: str | None = None,
        payload: bytes | None = None,
    ) -> Envelope:
        if payload is not None:
            raise NotImplementedError("the fake outbox carries JSON messages only")
        seq = None
        if stream is not None:
            seq = int(conn.execute(
                "INSERT INTO fake_outbox_stream (stream, last_seq) VALUES (?, 1) "
                "ON CONFLICT (stream) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
                (stream,),
            ).fetchone()[0])
        message = Envelope(
            type=type, source=self.source, time=self._clock.seconds(), body=body, stream=stream, seq=seq
        )
        conn.execute(
            "INSERT INTO fake_outbox (queue, message) VALUES (?, ?)", (to, message.to_bytes().decode())
        )
        return message

    def wake(self) -> None:
        self.wakes += 1

    @staticmethod
    def take(conn: Any) -> list[tuple[str, Envelope]]:
        """
        Remove and return every committed message, oldest first.
        """
        rows = conn.execute("SELECT position, queue, message FROM fake_outbox ORDER BY position").fetchall()
        conn.execute("DELETE FROM fake_outbox")
        return [(queue, Envelope.from_bytes(message.encode())) for _, queue, message in rows]

    @staticmethod
    def peek(conn: Any) -> list[tuple[str, Envelope]]:
        rows = conn.execute("SELECT queue, message FROM fake_outbox ORDER BY position").fetchall()
        return [(queue, Envelope.from_bytes(message.encode())) for queue, message in rows]


@implementer(IInbox)
class FakeInbox:
    """
    Applies messages through registered handlers, once per message id,
    after checking them against the catalogue (a message the catalogue
    refuses raises: in a test that is a bug, not a dead letter).  With
    C{dedupe=False} it applies a message again each time it comes (outcome
    C{"again"}): the handlers must then be idempotent on their own.
    """

    def __init__(self, db: Database, catalogue: Catalogue, *, dedupe: bool = True) -> None:
        self._db = db
        self._catalogue = catalogue
        self._dedupe = dedupe
        self.handlers: dict[str, Handler] = {}
        self.applied: list[str] = []
        self.duplicates = 0

    def register(self, type: str, handler: Handler) -> None:
        if type not in self._catalogue:
            raise ValueError(f"message type {type!r} is not in the catalogue")
        if type in self.handlers:
            raise ValueError(f"message type {type!r} already has a handler")
        self.handlers[type] = handler

    def deliver(self, message: Envelope) -> str:
        # As on the wire: what arrives is bytes, parsed and validated.
        message = Envelope.from_bytes(message.to_bytes(), message.payload)
        self._catalogue.validate(message)
        outcome: str = self._db.run_now(self._apply, message)
        if outcome == "duplicate":
            self.duplicates += 1
        else:
            self.applied.append(message.type)
        return outcome

    def _apply(self, conn: Any, message: Envelope) -> str:
        seen = conn.execute("SELECT 1 FROM fake_inbox_seen WHERE id = ?", (message.id,)).fetchone()
        if seen and self._dedupe:
            return "duplicate"
        self.handlers[message.type](conn, message)
        if not seen:
            conn.execute("INSERT INTO fake_inbox_seen (id) VALUES (?)", (message.id,))
        return "again" if seen else "applied"


@implementer(ILinkEnd)
class FakeLink:
    """
    A process's end of the link without a broker: a L{FakeOutbox} and a
    L{FakeInbox} on C{db}.  The link counts as down until a test calls
    L{come_up}, which runs the hooks given to L{when_up}.
    """

    def __init__(
        self, source: str, db: Database, catalogue: Catalogue, clock: IReactorTime, *, dedupe: bool = True
    ) -> None:
        self.outbox = FakeOutbox(source, clock)
        self.inbox = FakeInbox(db, catalogue, dedupe=dedupe)
        self.catalogue = catalogue
        self.up = False
        self._hooks: list[Callable[[], object]] = []

    def when_up(self, hook: Callable[[], object]) -> None:
        self._hooks.append(hook)

    def connected(self) -> bool:
        return self.up

    def come_up(self) -> None:
        self.up = True
        for hook in self._hooks:
            hook()


@dataclass
class Endpoint:
    """
    One process as the link sees it: the queue it consumes, its database,
    outbox and inbox (replaced when the process restarts).
    """

    queue: str
    db: Database
    outbox: FakeOutbox
    inbox: FakeInbox


@dataclass
class InProcessLink:
    """
    The broker, in process.  L{collect} takes committed messages from every
    outbox; L{deliver_one} hands one in-flight message to its queue's inbox
    (in random order when C{reorder}, sometimes twice when C{duplicate} > 0).
    Messages for a queue marked L{lose} are dropped, as when a long-offline
    edge's queue was purged.  C{delivered} lists, per queue, the types of
    the messages applied (duplicates not counted).
    """

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    reorder: bool = False
    duplicate: float = 0.0
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    in_flight: list[tuple[str, Envelope]] = field(default_factory=list)
    losing: set[str] = field(default_factory=set)
    delivered: dict[str, list[str]] = field(default_factory=dict)
    lost: int = 0

    def attach(self, endpoint: Endpoint) -> None:
        self.endpoints[endpoint.queue] = endpoint

    def detach(self, queue: str) -> None:
        """
        The process consuming C{queue} is gone for good: what is sent to it
        is lost.
        """
        self.endpoints.pop(queue, None)
        self.losing.add(queue)

    def lose(self, queue: str, losing: bool = True) -> None:
        (self.losing.add if losing else self.losing.discard)(queue)

    def collect(self) -> int:
        count = 0
        for endpoint in list(self.endpoints.values()):
            for queue, message in endpoint.db.run_now(FakeOutbox.take):
                if queue in self.losing:
                    self.lost += 1
                    continue
                self.in_flight.append((queue, message))
                count += 1
        return count

    def deliver_one(self) -> bool:
        if not self.in_flight:
            return False
        index = self.rng.randrange(len(self.in_flight)) if self.reorder else 0
        queue, message = self.in_flight[index]
        if not (self.duplicate and self.rng.random() < self.duplicate):
            del self.in_flight[index]
        if queue in self.losing:
            self.lost += 1
            self.in_flight = [(q, m) for q, m in self.in_flight if q != queue]
            return True
        endpoint = self.endpoints[queue]
        if endpoint.inbox.deliver(message) == "applied":
            self.delivered.setdefault(queue, []).append(message.type)
        return True

    def run(self, limit: int = 1_000_000, between: Callable[[], object] | None = None) -> int:
        """
        Carry messages until none is left (or C{limit} deliveries);
        C{between} runs after each delivery (a publisher round, say).
        """
        delivered = 0
        while delivered < limit:
            self.collect()
            if between is not None:
                between()
                self.collect()
            if not self.deliver_one():
                break
            delivered += 1
        return delivered
