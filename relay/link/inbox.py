"""
The inbox: every message's effect is applied exactly once.

A delivery (one message, or a bundle of them: L{relay.link.outbox}) is
parsed, validated against the catalogue and handed to the handler
registered for its type, all on the database thread, inside one
transaction that also records the message id; only after that transaction
commits is the delivery acked.  A message seen before (the
sender republished it after a lost confirm) is acked and ignored.
Deliveries that arrive while a transaction commits share the next one
(group commit, one disk sync for all); a handler that fails there undoes
its own message only (L{Inbox._apply_group}).

Messages of a stream (C{stream}, C{seq}) are applied in sequence order: one
that arrives ahead of a gap is held in the database until the gap is filled,
then applied with the ones it unblocks, in the same transaction.

A poison message (not an envelope, an unknown type, a body its schema
rejects, or one whose handler failed C{max_attempts} times) goes to the
dead letters (L{relay.link.deadletters}) with the reason and is acked, so
it never blocks the queue.  C{relay dead-letters} lists and replays them: a
replay is picked up by the running process's inbox.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from relay.db import Database, Schema
from relay.drain import Drain
from relay.link import deadletters
from relay.link.catalogue import Catalogue, InvalidBody, UnknownType
from relay.link.channel import Delivery, LinkDown
from relay.link.envelope import BUNDLE_TYPE, ENVELOPE_HEADER, BadEnvelope, Envelope
from relay.metrics import Metrics

T = TypeVar("T")

#: A handler applies one message inside the inbox's transaction.
Handler = Callable[[sqlite3.Connection, Envelope], None]


class IInbox(Interface):
    """
    What components that receive messages need of the inbox (the fake is
    L{relay.testing.sync.FakeInbox}).
    """

    def register(type: str, handler: Handler) -> None:
        """
        Apply messages of C{type} with C{handler}: on the database thread,
        inside the transaction that records the message as applied, once per
        message id (a handler that raises undoes its own message's effects,
        which are tried again).  The type must be in the catalogue, and have
        no handler yet.
        """

SCHEMA = Schema(
    "inbox",
    [
        """
        CREATE TABLE inbox_seen (
            id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            source TEXT NOT NULL,
            applied REAL NOT NULL
        );
        CREATE TABLE inbox_stream (
            stream TEXT PRIMARY KEY,
            last_seq INTEGER NOT NULL
        );
        CREATE TABLE inbox_held (
            stream TEXT NOT NULL,
            seq INTEGER NOT NULL,
            body BLOB NOT NULL,
            PRIMARY KEY (stream, seq)
        );
        CREATE TABLE inbox_failure (
            id TEXT PRIMARY KEY,
            attempts INTEGER NOT NULL,
            last_error TEXT NOT NULL
        );
        CREATE TABLE dead_letter (
            number INTEGER PRIMARY KEY AUTOINCREMENT,
            message_id TEXT,
            type TEXT,
            queue TEXT NOT NULL,
            reason TEXT NOT NULL,
            body BLOB NOT NULL,
            received REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'dead'
                CHECK (state IN ('dead', 'replay', 'replayed', 'dropped'))
        );
        """,
        # Binary payloads (small-file chunks) beside the JSON envelope.
        "ALTER TABLE inbox_held ADD COLUMN payload BLOB;\n"
        "ALTER TABLE dead_letter ADD COLUMN payload BLOB;",
    ],
)


@dataclass(frozen=True)
class _Buried:
    """
    The outcome of a poison message, dead-lettered in its group's transaction.
    """

    message_id: str | None
    reason: str


@dataclass(frozen=True)
class _HandlerFailed:
    """
    The outcome of a message whose handler raised; its effects were undone.
    """

    message: Envelope
    error: Exception


#: A group transaction stops taking messages once they hold this many bytes
#: (envelopes and payloads), however many it may take.
GROUP_BYTES = 8 << 20

#: What the database thread says became of one message.
_Outcome = str | _Buried | _HandlerFailed

#: Told what finally became of one message: its outcome, or why it could
#: not be recorded.
_Done = Callable[[str | Failure], object]


class _Settlement:
    """
    One delivery (a message, or a bundle of them) waiting for the outcomes
    of its messages: acked once all are in, requeued if one is to be
    retried or could not be recorded.
    """

    __slots__ = ("_delivery", "_waiting", "_retry", "_failure", "_log")

    def __init__(self, delivery: Delivery, messages: int, log: Logger) -> None:
        self._delivery = delivery
        self._waiting = messages
        self._retry = False
        self._failure: Failure | None = None
        self._log = log

    def done(self, result: str | Failure) -> None:
        if isinstance(result, Failure):
            self._failure = result
        elif result == "retry":
            self._retry = True
        self._waiting -= 1
        if self._waiting:
            return
        if self._failure is not None:
            # The database failed (disk full, say): the message stays on
            # the broker and comes back.
            self._log.failure("inbox could not record a delivery; requeueing", self._failure)
            _settle(self._delivery.nack)
        elif self._retry:
            _settle(self._delivery.nack)
        else:
            _settle(self._delivery.ack)


@implementer(IInbox)
class Inbox:
    """
    Applies the messages of one queue through registered handlers.

    @param on_applied: called on the reactor thread after each transaction
        that applied something commits (the outbox's C{wake}, so that
        messages the handlers put are published at once), before the
        deliveries are settled.
    @param group: at most this many messages share one transaction
        (group commit, on SQLite; see L{Inbox._enqueue}), and at most
        L{GROUP_BYTES} of them.
    """

    log = Logger()

    def __init__(
        self,
        db: Database,
        reactor: IReactorTime,
        catalogue: Catalogue,
        metrics: Metrics,
        *,
        queue: str,
        max_attempts: int = 5,
        on_applied: Callable[[], None] = lambda: None,
        group: int = 1024,
    ) -> None:
        self._db = db
        self._reactor = reactor
        self._catalogue = catalogue
        self.queue = queue
        self._max_attempts = max_attempts
        self._on_applied = on_applied
        self._handlers: dict[str, Handler] = {}
        # Group commit and savepoints: SQLite only.  On PostgreSQL a failed
        # statement inside a savepoint could hide a serialization failure
        # from the retry, so a message is its own transaction there.
        self._savepoints = db.dialect == "sqlite"
        self._group = group if self._savepoints else 1
        self._waiting: list[tuple[bytes, bytes | None, _Done]] = []
        self._commits = Drain(
            self._commit_group,
            lambda failure: self.log.failure("inbox could not settle a group", failure),
            ready=lambda: bool(self._waiting),
        )
        self._applied_now = 0  # on the database thread, in _apply_group
        self._applied = metrics.counter("inbox_applied", "Messages applied.")
        self._duplicates = metrics.counter("inbox_duplicates", "Duplicate deliveries ignored.")
        self._dead = metrics.counter("inbox_dead_lettered", "Messages moved to the dead letters.")
        self.dead_letters = 0
        metrics.gauge("dead_letters", "Dead letters awaiting attention.", lambda: self.dead_letters)

    def register(self, type: str, handler: Handler) -> None:
        """
        Apply messages of C{type} with C{handler}.  The type must be in the
        catalogue.
        """
        if type not in self._catalogue:
            raise ValueError(f"message type {type!r} is not in the catalogue")
        if type in self._handlers:
            raise ValueError(f"message type {type!r} already has a handler")
        self._handlers[type] = handler

    async def refresh(self) -> None:
        self.dead_letters = await self._db.read(deadletters.count)

    # -- deliveries ------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        """
        The consumer callback: apply, then settle the delivery.

        A message takes no coroutine and no Deferred on its way: it joins
        the next group transaction, and the delivery is acked when that
        commits.  A bundle's messages each have their own outcome; the
        bundle is acked once all are applied (or ignored as duplicates, or
        dead-lettered), and requeued if any is to be retried: those already
        applied are then duplicates.
        """
        header = delivery.headers.get(ENVELOPE_HEADER)
        if header is not None:
            body = header.encode() if isinstance(header, str) else bytes(header)
            items: list[tuple[bytes, bytes | None]] = [(body, delivery.body)]
        elif delivery.properties.get("content_type") == BUNDLE_TYPE:
            items = [(line, None) for line in delivery.body.split(b"\n")]
        else:
            items = [(delivery.body, None)]
        settlement = _Settlement(delivery, len(items), self.log)
        for body, payload in items:
            self._enqueue(body, payload, settlement.done)

    def receive(self, body: bytes, payload: bytes | None = None) -> Deferred[str]:
        """
        Apply one message: its envelope's bytes, and its binary payload if it
        has one.  Fires with C{"applied"}, C{"held"}, C{"duplicate"},
        C{"dead"} or C{"retry"} (the handler failed; the delivery should be
        requeued).
        """
        outcome: Deferred[str] = Deferred()

        def done(result: str | Failure) -> None:
            if isinstance(result, Failure):
                outcome.errback(result)
            else:
                outcome.callback(result)

        self._enqueue(body, payload, done)
        return outcome

    def _enqueue(self, body: bytes, payload: bytes | None, done: _Done) -> None:
        """
        The message joins the next transaction.  Messages that arrive while
        a transaction commits share the next one: one disk sync for all of
        them instead of one each (with C{synchronous=FULL} that sync bounds
        the rate).  Each still has its own outcome, given to C{done} after
        the commit.
        """
        self._waiting.append((body, payload, done))
        self._commits.wake()

    async def _commit_group(self) -> bool:
        """
        One transaction: the next group of waiting messages.  Another
        follows while messages wait.
        """
        group = self._next_group()
        try:
            outcomes, applied = await self._db.run(self._apply_group, [(b, p) for b, p, _ in group])
        except Exception:
            failure = Failure()
            for body, payload, done in group:
                self._transaction_failed(body, payload, failure).addBoth(done)
            return True
        self._applied.inc(applied)
        self._duplicates.inc(outcomes.count("duplicate"))
        if applied:
            self._on_applied()
        for (body, _, done), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, _Buried):
                done(self._buried(outcome.message_id, outcome.reason))
            elif isinstance(outcome, _HandlerFailed):
                failed = self._apply_failed(outcome.message, body, outcome.error)
                Deferred.fromCoroutine(failed).addBoth(done)
            else:
                done(outcome)
        return True

    def _next_group(self) -> list[tuple[bytes, bytes | None, _Done]]:
        count, size = 0, 0
        for body, payload, _ in self._waiting:
            count += 1
            size += len(body) + (len(payload) if payload is not None else 0)
            if count == self._group or size >= GROUP_BYTES:
                break
        group, self._waiting = self._waiting[:count], self._waiting[count:]
        return group

    def _transaction_failed(self, body: bytes, payload: bytes | None, failure: Failure) -> Deferred[str]:
        """
        The whole transaction failed: the database, or (without savepoints)
        this message's handler.  It counts as an attempt for the message.
        """
        try:
            message = Envelope.from_bytes(body, payload)
        except BadEnvelope:
            return fail(failure)
        return Deferred.fromCoroutine(self._apply_failed(message, body, failure.value))

    async def _apply_failed(self, message: Envelope, body: bytes, error: BaseException | None) -> str:
        reason = f"{type(error).__name__}: {error}"
        attempts = await self._db.run(_failed, message.id, reason)
        if attempts < self._max_attempts:
            self.log.warn(
                "handler for {type} failed on {id} (attempt {attempts}): {reason}",
                type=message.type, id=message.id, attempts=attempts, reason=reason,
            )
            return "retry"
        reason = f"handler failed {attempts} times; last: {reason}"
        await self._db.run(
            deadletters.bury, message.id, message.type, self.queue, reason, body, message.payload,
            self._reactor.seconds(),
        )
        return self._buried(message.id, reason)

    def _buried(self, message_id: str | None, reason: str) -> str:
        self._dead.inc()
        self.dead_letters += 1
        self.log.error("dead letter on {queue}: message {id}: {reason}", queue=self.queue, id=message_id, reason=reason)
        return "dead"

    # -- on the database thread --------------------------------------------------

    def _apply_group(
        self, conn: sqlite3.Connection, group: list[tuple[bytes, bytes | None]]
    ) -> tuple[list[_Outcome], int]:
        """
        On the database thread, in one transaction: each message of the
        group parsed, validated and applied (or buried, if it is poison);
        the outcomes, and how many messages were applied (a held message
        that a group fills the gap before counts too).

        All of a message's work is done here rather than on the reactor's
        thread: the two threads share one interpreter lock, and the reactor
        parsing a flood of deliveries while this thread applies starved it
        (each statement gives the lock up and waits to get it back).

        The whole group is tried at once first.  If a handler fails, that
        try is undone and each message gets its own savepoint, so that a
        failing handler undoes its own message only.  (Handlers touch only
        the database, so trying again is safe.)
        """
        self._applied_now = 0
        outcomes: list[_Outcome | None] = []
        valid: list[tuple[Envelope, bytes]] = []
        for body, payload in group:
            try:
                valid.append((self._parse(body, payload), body))
                outcomes.append(None)
            except (BadEnvelope, UnknownType, InvalidBody) as e:
                message_id = _peek_id(body)
                deadletters.bury(
                    conn, message_id, _peek_type(body), self.queue, str(e), body, payload, self._reactor.seconds()
                )
                outcomes.append(_Buried(message_id, str(e)))
        applied = iter(self._apply_valid(conn, valid))
        return [outcome if outcome is not None else next(applied) for outcome in outcomes], self._applied_now

    def _parse(self, body: bytes, payload: bytes | None) -> Envelope:
        message = Envelope.from_bytes(body, payload)
        self._catalogue.validate(message)
        if message.type not in self._handlers:
            raise UnknownType(f"no handler for {message.type!r} on {self.queue}")
        return message

    def _apply_valid(self, conn: sqlite3.Connection, group: list[tuple[Envelope, bytes]]) -> list[_Outcome]:
        if not self._savepoints:
            # A group of one: a failing handler fails the transaction.
            return [self._apply(conn, message, body) for message, body in group]
        if len(group) == 1:
            return [self._apply_alone(conn, *group[0])]
        conn.execute("SAVEPOINT inbox_group")
        try:
            outcomes = self._apply_all(conn, group)
        except Exception:
            conn.execute("ROLLBACK TO SAVEPOINT inbox_group")
        else:
            conn.execute("RELEASE SAVEPOINT inbox_group")
            return outcomes
        conn.execute("RELEASE SAVEPOINT inbox_group")
        self._applied_now = 0
        return [self._apply_alone(conn, message, body) for message, body in group]

    def _apply_alone(self, conn: sqlite3.Connection, message: Envelope, body: bytes) -> _Outcome:
        """
        One message in its own savepoint: a failing handler undoes only its
        own message's effects.
        """
        conn.execute("SAVEPOINT inbox_message")
        applied = self._applied_now
        try:
            return self._apply(conn, message, body)
        except Exception as e:
            conn.execute("ROLLBACK TO SAVEPOINT inbox_message")
            self._applied_now = applied
            return _HandlerFailed(message, e)
        finally:
            conn.execute("RELEASE SAVEPOINT inbox_message")

    def _apply_all(self, conn: sqlite3.Connection, group: list[tuple[Envelope, bytes]]) -> list[_Outcome]:
        """
        The whole group at once, as L{_apply} does it one by one, in fewer
        statements: the messages outside streams are recorded as seen in one
        statement, which tells the duplicates, and their failure records
        cleared in another; the handlers run in arrival order.
        """
        plain = [message for message, _ in group if message.stream is None]
        fresh = self._record_all_seen(conn, plain)
        applied: list[str] = []
        outcomes: list[_Outcome] = []
        for message, body in group:
            if message.stream is not None:
                outcomes.append(self._apply(conn, message, body))
            elif message.id in fresh:
                fresh.discard(message.id)  # a second copy in the group is a duplicate
                self._handlers[message.type](conn, message)
                self._applied_now += 1
                applied.append(message.id)
                outcomes.append("applied")
            else:
                outcomes.append("duplicate")
        for chunk in _chunks(applied):
            conn.execute(f"DELETE FROM inbox_failure WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        return outcomes

    def _record_all_seen(self, conn: sqlite3.Connection, messages: list[Envelope]) -> set[str]:
        """
        Record C{messages} as seen; return the ids that were not seen before.
        """
        now = self._reactor.seconds()
        fresh: set[str] = set()
        for chunk in _chunks(messages):
            values = [v for m in chunk for v in (m.id, m.type, m.source, now)]
            fresh.update(
                row[0]
                for row in conn.execute(
                    "INSERT OR IGNORE INTO inbox_seen (id, type, source, applied) VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
                    + " RETURNING id",
                    values,
                )
            )
        return fresh

    def _apply(self, conn: sqlite3.Connection, message: Envelope, body: bytes) -> _Outcome:
        """
        On the database thread, in the transaction: the whole effect of one
        message.
        """
        if message.stream is None:
            return self._apply_all(conn, [(message, body)])[0]
        if conn.execute("SELECT 1 FROM inbox_seen WHERE id = ?", (message.id,)).fetchone():
            return "duplicate"
        row = conn.execute("SELECT last_seq FROM inbox_stream WHERE stream = ?", (message.stream,)).fetchone()
        last = 0 if row is None else int(row[0])
        assert message.seq is not None
        if message.seq <= last:
            return "duplicate"
        if message.seq > last + 1:
            conn.execute(
                "INSERT OR IGNORE INTO inbox_held (stream, seq, body, payload) VALUES (?, ?, ?, ?)",
                (message.stream, message.seq, body, message.payload),
            )
            return "held"
        self._record_seen(conn, message)
        self._run_handler(conn, message)
        last = message.seq
        while True:
            held = conn.execute(
                "SELECT body, payload FROM inbox_held WHERE stream = ? AND seq = ?",
                (message.stream, last + 1),
            ).fetchone()
            if held is None:
                break
            conn.execute("DELETE FROM inbox_held WHERE stream = ? AND seq = ?", (message.stream, last + 1))
            following = Envelope.from_bytes(bytes(held[0]), None if held[1] is None else bytes(held[1]))
            if self._record_seen(conn, following):
                self._run_handler(conn, following)
            last += 1
        conn.execute(
            "INSERT INTO inbox_stream (stream, last_seq) VALUES (?, ?) "
            "ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
            (message.stream, last),
        )
        return "applied"

    def _record_seen(self, conn: sqlite3.Connection, message: Envelope) -> bool:
        """
        Record C{message} as seen; whether it was not seen before.
        """
        return bool(self._record_all_seen(conn, [message]))

    def _run_handler(self, conn: sqlite3.Connection, message: Envelope) -> None:
        self._handlers[message.type](conn, message)
        conn.execute("DELETE FROM inbox_failure WHERE id = ?", (message.id,))
        self._applied_now += 1

    # -- replays ---------------------------------------------------------------

    async def replay_requested(self) -> int:
        """
        Apply the dead letters an operator marked for replay (C{relay
        dead-letters replay}); return how many were applied.  Called by a
        timer.
        """
        replays = await self._db.read(deadletters.replays_due, self.queue)
        applied = 0
        for number, body, payload in replays:
            await self._db.run(_clear_failure, _peek_id(body))
            outcome = await self.receive(body, payload)
            state = "replayed" if outcome in ("applied", "duplicate", "held") else "dead"
            await self._db.run(deadletters.mark_replayed, number, state)
            applied += state == "replayed"
        await self.refresh()
        return applied


def _chunks(items: list[T], size: int = 500) -> list[list[T]]:
    # Statements with one placeholder group per item stay far below
    # SQLite's limit on variables.
    return [items[i : i + size] for i in range(0, len(items), size)]


def _settle(action: Callable[[], None]) -> None:
    try:
        action()
    except LinkDown:
        # The channel went away: the broker redelivers the message, and the
        # inbox recognises it by its id.
        pass


def _peek(body: bytes, field: str) -> str | None:
    try:
        value = json.loads(body).get(field)
    except Exception:
        return None
    return value if isinstance(value, str) else None


def _peek_id(body: bytes) -> str | None:
    return _peek(body, "id")


def _peek_type(body: bytes) -> str | None:
    return _peek(body, "type")


def _failed(conn: sqlite3.Connection, message_id: str, reason: str) -> int:
    row = conn.execute(
        "INSERT INTO inbox_failure (id, attempts, last_error) VALUES (?, 1, ?) "
        "ON CONFLICT (id) DO UPDATE SET attempts = inbox_failure.attempts + 1, last_error = excluded.last_error "
        "RETURNING attempts",
        (message_id, reason),
    ).fetchone()
    return int(row[0])


def _clear_failure(conn: sqlite3.Connection, message_id: str | None) -> None:
    conn.execute("DELETE FROM inbox_failure WHERE id = ?", (message_id,))
