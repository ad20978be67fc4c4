"""
The outbox: nothing a process says is lost on the way to the broker.

A message is first committed to the local database, in the same transaction
as whatever caused it (L{Outbox.put}).  The pump then publishes it with
publisher confirms and C{mandatory}, at most C{window} at a time, and deletes
it only when the broker acks it.  A nack, a lost connection or a
C{basic.return} (no queue took it) leave it in the table; after a reconnect,
everything unconfirmed is published again, which is why receivers
deduplicate by message id (L{relay.link.inbox}).

Messages to the same queue that are waiting together travel as one AMQP
message, a bundle (L{relay.link.envelope.BUNDLE_TYPE}: their envelopes, one
per line): the broker's work, the frames and the confirms are per AMQP
message, so under load a bundle of 64 costs about what one message did.
Nothing waits to fill a bundle: a message alone goes alone.  Messages with a
binary payload always go alone.

The pump's states: C{down} (no channel), C{running}, C{blocked} (the broker
said C{connection.blocked}: publishing waits).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from relay.db import Database, Schema
from relay.drain import Drain
from relay.link.channel import Channel, LinkDown, ReturnedMessage
from relay.link.envelope import BUNDLE_TYPE, ENVELOPE_HEADER, JOBS, Envelope
from relay.metrics import Metrics

SCHEMA = Schema(
    "outbox",
    [
        """
        CREATE TABLE outbox (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            queue TEXT NOT NULL,
            type TEXT NOT NULL,
            body BLOB NOT NULL,
            created REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            last_error TEXT
        );
        CREATE TABLE outbox_stream (
            stream TEXT PRIMARY KEY,
            last_seq INTEGER NOT NULL
        );
        """,
        # Binary payloads (small-file chunks) beside the JSON envelope.
        "ALTER TABLE outbox ADD COLUMN payload BLOB;",
        # The process that put the message, on a database several share.
        "ALTER TABLE outbox ADD COLUMN owner TEXT;",
    ],
)


class IOutbox(Interface):
    """
    What components that send messages need of the outbox (the fake is
    L{relay.testing.sync.FakeOutbox}).
    """

    def put(
        conn: Any, type: str, body: dict[str, Any], *, to: str, stream: str | None = None,
        payload: bytes | None = None,
    ) -> Envelope:
        """
        Add a message inside the caller's transaction (on the database
        thread); it is published after the transaction commits.
        """

    def wake() -> None:
        """
        New messages were committed: publish them now rather than at the
        next poll.
        """

    def holds(conn: Any, message_id: str) -> bool:
        """
        Whether the message C{message_id} (an envelope's C{id} from
        L{put}) is still waiting here: committed, and not yet confirmed by
        the broker.  On the database thread.
        """


@dataclass
class _InFlight:
    """
    One AMQP message awaiting its confirm: one relay message, or a bundle.
    """

    message_id: str  # the AMQP message's (a bundle's is its first message's)
    positions: list[int]
    ids: list[str]


#: Work queues, whose every delivery must be one message: a worker's
#: prefetch counts deliveries, and each is one job.
UNBUNDLED = frozenset({JOBS})

#: A bundle's limits: messages, and bytes of envelopes (one body frame).
BUNDLE_MESSAGES = 64
BUNDLE_BYTES = 96 * 1024


@implementer(IOutbox)
class Outbox:
    """
    The outgoing messages of one process, and the pump that publishes them.

    @param source: who this process is in envelopes (C{"edge:<id>"},
        C{"cloud"}).
    @param window: how many messages may await their confirm at once; on a
        300 ms round trip, the window (not the round trip) bounds the rate:
        at most C{window} per round trip (4000 allows ~13,000 msg/s at 300 ms;
        1000 measured ~1,800 msg/s there with the window always full).  A
        reconnect republishes at most this many.
    @param retry_returned: seconds before a returned (unroutable) message is
        published again.
    @param on_confirmed: called after confirmed messages were removed (the
        link is doing real work).
    @param rescan_after: when the pump has caught up, read the whole table
        again this many seconds later (C{None}: never).  For a database
        several processes write (the cloud's PostgreSQL): a row is numbered
        when inserted but seen when committed, so the cursor may pass a row
        of this process that commits after another's higher-numbered one.
    @param takeover_after: on a database several processes write, publish
        only this process's messages (and those of no process), and another
        process's once it is this many seconds old: that process is gone or
        cut off from the broker.  Every process publishing every message
        cost each message a second publish, a second delivery the receiver
        threw away, and deletes that conflicted.  C{None}: all messages.
    @param declare_destinations: declare each destination (exchange, queue,
        binding) before the first message to it on a connection.  The cloud
        does, so that an edge's queue exists before the edge ever connected;
        an edge does not (its broker user may only write to the cloud's
        exchange, which the cloud declares).
    """

    log = Logger()

    def __init__(
        self,
        db: Database,
        reactor: IReactorTime,
        metrics: Metrics,
        *,
        source: str,
        window: int = 4000,
        batch: int = 500,
        retry_returned: float = 5.0,
        declare_destinations: bool = False,
        on_confirmed: Callable[[], object] | None = None,
        bundle: int = BUNDLE_MESSAGES,
        rescan_after: float | None = None,
        takeover_after: float | None = None,
    ) -> None:
        self._db = db
        self._owner = f"{source}/{uuid.uuid4().hex}"
        self._takeover_after = takeover_after
        self._reactor = reactor
        self._source = source
        self._window = window
        self._batch = batch
        self._bundle = bundle
        self._retry_returned = retry_returned
        self._declare_destinations = declare_destinations
        self._on_confirmed = on_confirmed
        self._declared: set[str] = set()
        self._channel: Channel | None = None
        self._blocked = False
        self._in_flight: dict[int, _InFlight] = {}
        self._in_flight_messages = 0
        self._queued: set[int] = set()
        self._cursor = 0
        self._acked: list[int] = []
        self._pump = Drain(self._fill, self._pump_failed, ready=self._may_publish)
        self._deleting: Deferred[None] | None = None
        self._retry_call: IDelayedCall | None = None
        self._returned_ids: set[str] = set()
        self.depth = 0
        self._last_count = float("-inf")
        self._count_call: IDelayedCall | None = None
        self._pump_call: IDelayedCall | None = None
        self._rescan_after = rescan_after
        self._rescan_call: IDelayedCall | None = None
        self._stopped = False
        self.oldest: float | None = None
        self._published = metrics.counter("outbox_published", "Messages published (including republished).")
        self._confirmed = metrics.counter("outbox_confirmed", "Messages the broker confirmed.")
        self._returned = metrics.counter("outbox_returned", "Messages no queue took (alarm).")
        self._nacked = metrics.counter("outbox_nacked", "Messages the broker refused (nack).")
        metrics.gauge("outbox_depth", "Messages not yet confirmed.", lambda: self.depth)
        metrics.gauge("outbox_in_flight", "Messages awaiting their confirm.", lambda: self._in_flight_messages)
        metrics.gauge("outbox_oldest_age_seconds", "Age of the oldest unconfirmed message.", self.oldest_age)

    # -- writing ---------------------------------------------------------------

    def put(
        self,
        conn: sqlite3.Connection,
        type: str,
        body: dict[str, Any],
        *,
        to: str,
        stream: str | None = None,
        payload: bytes | None = None,
    ) -> Envelope:
        """
        Add a message inside the caller's transaction (on the database
        thread).  Call L{wake} once the transaction has committed.

        @param to: the queue the message is for.
        @param stream: messages of one stream get consecutive C{seq}
            numbers, in commit order, so the receiver can apply them in
            order.
        """
        seq = None
        if stream is not None:
            row = conn.execute(
                "INSERT INTO outbox_stream (stream, last_seq) VALUES (?, 1) "
                "ON CONFLICT (stream) DO UPDATE SET last_seq = last_seq + 1 "
                "RETURNING last_seq",
                (stream,),
            ).fetchone()
            seq = int(row[0])
        message = Envelope(
            type=type, source=self._source, time=self._reactor.seconds(), body=body,
            stream=stream, seq=seq, payload=payload,
        )
        conn.execute(
            "INSERT INTO outbox (id, queue, type, body, created, payload, owner) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (message.id, to, type, message.to_bytes(), message.time, payload, self._owner),
        )
        return message

    async def send(
        self, type: str, body: dict[str, Any], *, to: str, stream: str | None = None
    ) -> Envelope:
        """
        Commit one message on its own and wake the pump.  The message is
        safe when this returns; it reaches the broker when the link allows.
        """
        message = await self._db.run(lambda conn: self.put(conn, type, body, to=to, stream=stream))
        self.wake()
        return message

    # -- the pump --------------------------------------------------------------

    @property
    def state(self) -> str:
        if self._channel is None:
            return "down"
        return "blocked" if self._blocked else "running"

    @property
    def in_flight(self) -> int:
        return self._in_flight_messages

    def oldest_age(self) -> float:
        return 0.0 if self.oldest is None else max(0.0, self._reactor.seconds() - self.oldest)

    def attach(self, channel: Channel) -> None:
        """
        A channel is up: publish everything unconfirmed, from the start.
        """
        self._channel = channel
        self._blocked = False
        self._stopped = False
        self._declared = set()
        channel.on_ack = self._on_ack
        channel.on_nack = self._on_nack
        channel.on_return = self._on_return
        self._forget_in_flight()
        self._cursor = 0
        self.wake()

    def detach(self) -> None:
        """
        The channel is gone: whatever awaited a confirm is published again on
        the next one.
        """
        self._channel = None
        self._forget_in_flight()

    def _forget_in_flight(self) -> None:
        self._in_flight.clear()
        self._in_flight_messages = 0
        self._queued.clear()

    def set_blocked(self, blocked: bool) -> None:
        """
        The broker blocked (or unblocked) publishing on this connection.
        """
        was, self._blocked = self._blocked, blocked
        if was and not blocked:
            self.wake()

    def holds(self, conn: sqlite3.Connection, message_id: str) -> bool:
        return conn.execute("SELECT 1 FROM outbox WHERE id = ?", (message_id,)).fetchone() is not None

    def wake(self) -> None:
        """
        There may be new messages: publish what the window allows.
        """
        self._pump.wake()

    def _may_publish(self) -> bool:
        return self._channel is not None and not self._blocked and self._in_flight_messages < self._window

    async def _fill(self) -> bool:
        """
        One pass of the pump: publish the next batch of rows; whether
        another pass should follow at once.
        """
        channel = self._channel
        assert channel is not None
        now = self._reactor.seconds()
        mine = None if self._takeover_after is None else (self._owner, now - self._takeover_after)
        rows = await self._db.read(_pending, self._cursor, self._batch, now, mine)
        if len(rows) < self._batch:
            # Caught up: a good moment to count what is left.
            self._count_soon()
            self._rescan_soon()
        if channel is not self._channel:
            return True
        if not await self._publish_rows(channel, rows):
            return False
        # A full batch, or a full window (the pump waits for confirms then).
        return len(rows) == self._batch or self._in_flight_messages >= self._window

    def _pump_failed(self, failure: Failure) -> None:
        self.log.failure("outbox pump failed; retrying shortly", failure)
        if not self._stopped:
            self._pump_call = self._reactor.callLater(1.0, self.wake)

    async def _publish_rows(self, channel: Channel, rows: list[_Row]) -> bool:
        """
        Publish what the window allows of C{rows}, consecutive ones to the
        same queue bundled.  False if the channel went away meanwhile.
        """
        bundle: list[_Row] = []
        size = 0
        try:
            for row in rows:
                position, _, queue, body, payload = row
                if self._in_flight_messages + len(bundle) >= self._window:
                    break
                if position in self._queued:
                    self._cursor = max(self._cursor, position)
                    continue
                if bundle and (
                    payload is not None
                    or queue != bundle[0][2]
                    or queue in UNBUNDLED
                    or len(bundle) >= self._bundle
                    or size + len(body) > BUNDLE_BYTES
                ):
                    self._publish(channel, bundle)
                    bundle, size = [], 0
                if self._declare_destinations and queue not in self._declared:
                    try:
                        await channel.declare_destination(queue)
                    except LinkDown:
                        return False  # the next channel declares it again
                    self._declared.add(queue)
                    if channel is not self._channel:
                        return False
                self._cursor = max(self._cursor, position)
                if payload is not None:
                    self._publish(channel, [row])
                else:
                    bundle.append(row)
                    size += len(body) + 1
            if bundle:
                self._publish(channel, bundle)
        except LinkDown:
            return False  # attach() starts the next channel from the start
        return True

    def _publish(self, channel: Channel, rows: list[_Row]) -> None:
        """
        One AMQP message: a relay message alone, or a bundle of them.
        """
        _, message_id, queue, body, payload = rows[0]
        if payload is not None:
            seq = channel.publish(
                queue, queue, payload,
                headers={ENVELOPE_HEADER: body.decode()},
                properties={"message_id": message_id, "content_type": "application/octet-stream"},
            )
        elif len(rows) == 1:
            seq = channel.publish(
                queue, queue, body, properties={"message_id": message_id, "content_type": "application/json"}
            )
        else:
            seq = channel.publish(
                queue, queue, b"\n".join(row[3] for row in rows),
                properties={"message_id": message_id, "content_type": BUNDLE_TYPE},
            )
        positions = [row[0] for row in rows]
        self._queued.update(positions)
        self._in_flight[seq] = _InFlight(message_id, positions, [row[1] for row in rows])
        self._in_flight_messages += len(rows)
        self._published.inc(len(rows))

    async def _refresh_depth(self) -> None:
        self._last_count = self._reactor.seconds()
        self.depth, self.oldest = await self._db.read(_depth)

    def _count_soon(self) -> None:
        """
        Refresh the depth and the oldest message's age for health and
        metrics, at most once a second: counting the table after every
        confirm cost the edge a tenth of its time at full speed.
        """
        if self._stopped or (self._count_call is not None and self._count_call.active()):
            return
        wait = max(0.0, self._last_count + 1.0 - self._reactor.seconds())

        def count() -> None:
            self._count_call = None
            Deferred.fromCoroutine(self._refresh_depth()).addErrback(
                lambda f: self.log.failure("could not count the outbox", f)
            )

        self._count_call = self._reactor.callLater(wait, count)

    def _rescan_soon(self) -> None:
        """
        Read the table from the start after C{rescan_after} seconds (what
        is in flight is not published again).
        """
        if self._rescan_after is None or self._stopped:
            return
        if self._rescan_call is not None and self._rescan_call.active():
            return

        def rescan() -> None:
            self._rescan_call = None
            self._cursor = 0
            self.wake()

        self._rescan_call = self._reactor.callLater(self._rescan_after, rescan)

    def _settled(self, seq: int, multiple: bool) -> list[_InFlight]:
        seqs = [s for s in self._in_flight if s <= seq] if multiple else [seq]
        settled = [entry for s in seqs if (entry := self._in_flight.pop(s, None)) is not None]
        self._in_flight_messages -= sum(len(entry.positions) for entry in settled)
        return settled

    def _on_ack(self, seq: int, multiple: bool) -> None:
        for entry in self._settled(seq, multiple):
            if entry.message_id in self._returned_ids:
                # Returned first, then acked: nobody took it; retry later.
                self._returned_ids.discard(entry.message_id)
                self._queued.difference_update(entry.positions)
                continue
            self._acked.extend(entry.positions)
            self._confirmed.inc(len(entry.positions))
        self._flush_acked()
        self.wake()

    def _on_nack(self, seq: int, multiple: bool) -> None:
        for entry in self._settled(seq, multiple):
            self._nacked.inc(len(entry.positions))
            self._queued.difference_update(entry.positions)
            self._cursor = min(self._cursor, entry.positions[0] - 1)
        self.wake()

    def _on_return(self, returned: ReturnedMessage) -> None:
        message_id = str(returned.properties.get("message_id", ""))
        # Its confirm follows, so it is still in flight: a bundle's messages
        # all wait.
        ids = next((e.ids for e in self._in_flight.values() if e.message_id == message_id), [message_id])
        self._returned.inc(len(ids))
        self._returned_ids.add(message_id)
        self.log.error(
            "message {id} to {queue} was returned ({code} {text}): no queue took it; "
            "retrying in {delay}s",
            id=message_id if len(ids) == 1 else f"{message_id} (a bundle of {len(ids)})",
            queue=returned.routing_key, code=returned.reply_code,
            text=returned.reply_text, delay=self._retry_returned,
        )
        Deferred.fromCoroutine(self._postpone(ids, f"{returned.reply_code} {returned.reply_text}"))

    async def _postpone(self, ids: list[str], error: str) -> None:
        try:
            await self._db.run(_postpone, ids, self._reactor.seconds() + self._retry_returned, error)
        except Exception:
            # The messages are still in the table: the retry below publishes
            # them again, only without the attempt counted.
            self.log.failure("could not record the return of {ids}; retrying anyway", ids=ids)
        if not self._stopped and (self._retry_call is None or not self._retry_call.active()):
            self._retry_call = self._reactor.callLater(self._retry_returned, self._retry)

    def _retry(self) -> None:
        self._cursor = 0
        self.wake()

    def _flush_acked(self) -> None:
        if self._deleting is not None or not self._acked:
            return
        positions, self._acked = self._acked, []

        def done(_: object) -> None:
            self._queued.difference_update(positions)
            self._deleting = None
            self._flush_acked()
            self._count_soon()
            if self._on_confirmed is not None:
                self._on_confirmed()

        self._deleting = self._db.run(_delete, positions)
        self._deleting.addCallback(done).addErrback(
            lambda f: self.log.failure("could not delete confirmed messages", f)
        )

    def stop(self) -> None:
        """
        Cancel the pump's timers and set no more (the process is stopping;
        confirms may still arrive while the connection closes).
        """
        self._stopped = True
        for call in (self._count_call, self._retry_call, self._pump_call, self._rescan_call):
            if call is not None and call.active():
                call.cancel()
        self._count_call = self._retry_call = self._pump_call = self._rescan_call = None

    def drained(self) -> Deferred[None]:
        """
        Fires when nothing is left to send (for tests and orderly shutdown).
        """
        return Deferred.fromCoroutine(self._wait_drained())

    async def _wait_drained(self) -> None:
        while True:
            await self._refresh_depth()
            if self.depth == 0:
                return
            await deferLater(self._reactor, 0.05, lambda: None)


#: An outbox row as the pump reads it: position, id, queue, body, payload.
_Row = tuple[int, str, str, bytes, bytes | None]


def _pending(
    conn: sqlite3.Connection, after: int, limit: int, now: float, mine: tuple[str, float] | None = None
) -> list[_Row]:
    """
    The next rows to publish; with C{mine} (this process's owner, and the
    time before which another's messages are taken over), only those.
    """
    owned = ""
    args: list[Any] = [after, now]
    if mine is not None:
        owned = " AND (owner IS NULL OR owner = ? OR created < ?)"
        args += list(mine)
    return [
        (row[0], row[1], row[2], bytes(row[3]), None if row[4] is None else bytes(row[4]))
        for row in conn.execute(
            f"SELECT position, id, queue, body, payload FROM outbox "
            f"WHERE position > ? AND not_before <= ?{owned} ORDER BY position LIMIT ?",
            (*args, limit),
        )
    ]


def _depth(conn: sqlite3.Connection) -> tuple[int, float | None]:
    row = conn.execute("SELECT count(*), min(created) FROM outbox").fetchone()
    return int(row[0]), row[1]


def _delete(conn: sqlite3.Connection, positions: list[int]) -> None:
    conn.executemany("DELETE FROM outbox WHERE position = ?", [(p,) for p in positions])


def _postpone(conn: sqlite3.Connection, ids: list[str], not_before: float, error: str) -> None:
    conn.executemany(
        "UPDATE outbox SET attempts = attempts + 1, not_before = ?, last_error = ? WHERE id = ?",
        [(not_before, error, message_id) for message_id in ids],
    )

