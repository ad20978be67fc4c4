"""
The registry's event log, and how edges are kept up to date from it.

Every change to the registry appends an event in the same transaction
(L{EventLog}), unnumbered, to C{sync_pending}.  L{sequence} numbers the
events committed so far, 1, 2, 3 ... without gaps, and moves them to
C{sync_log}.  Every edge replicates the whole registry, so one numbering
serves them all: an edge's position is the last event it applied, and it
asks for what it lacks by number.

Why the number is given after the commit, not in the writer's transaction:
a counter row that every writer updates serialises all the registry's
writers across processes, each holding the row from its first event until
its commit (its fsync included), and on PostgreSQL (serializable) a writer
that waited for the row is aborted and runs again.  Jobs on several workers
commit a few events each, so that counter was what their runs queued on.
Pending events carry an identity (C{id}) drawn when they are inserted;
L{sequence} numbers the committed ones in that order.  That keeps every
order an edge can observe: a transaction that changed a row another had
changed, or read what another wrote, started after that one committed, so
its events' ids are higher, and it cannot be visible to L{sequence} without
the other.  Events of transactions that are still open when L{sequence}
runs (with lower ids) are numbered by a later run, after the ones numbered
now: they are independent of them.

  - L{SyncPublisher} (on a timer) numbers the pending events, then sends
    each active edge the events it has not been sent yet, in C{sync.events}
    messages of at most 500 events.
  - L{SyncResponder} answers an edge's C{sync.hello} (a fresh edge gets a
    snapshot; a known one the events after its position) and C{sync.range}
    (a gap it noticed).  An edge whose position is older than the pruned
    part of the log, or too far behind, gets a snapshot instead.

Sync messages do not use the link's ordering streams on purpose: a stream
holds everything behind a missing message, and a message lost for good (a
queue purged after a long outage) would stall the edge forever.  The edge
orders events by their log number itself and fills gaps by asking.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relay.db import Database, Schema
from relay.link.envelope import Envelope, to_edge
from relay.replication import TABLES, IOutbox, Table, encode_json
from relay.sync_messages import (
    EVENTS,
    HELLO,
    MAX_EVENTS_PER_MESSAGE,
    MAX_ROWS_PER_PART,
    RANGE,
    SNAPSHOT,
    event_data_schemas,
)

#: Edges not heard from for this long get no live logs or small results
#: (their next C{sync.hello} makes them active again).
ACTIVE_WITHIN = 7 * 86400.0


def active_edges(conn: Any, since: float) -> list[str]:
    """
    The edges the cloud heard from since C{since} (C{sync_edges}).
    """
    rows = conn.execute("SELECT edge FROM sync_edges WHERE last_seen >= ? ORDER BY edge", (since,))
    return [row[0] for row in rows]

SCHEMA = Schema(
    "sync",
    [
        """
        CREATE TABLE sync_log (
            seq BIGINT PRIMARY KEY,
            kind TEXT NOT NULL,
            data TEXT NOT NULL,
            command_id TEXT,
            logged_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE sync_counter (
            name TEXT PRIMARY KEY,
            value BIGINT NOT NULL
        );
        INSERT INTO sync_counter (name, value) VALUES ('head', 0), ('horizon', 0);
        CREATE TABLE sync_edges (
            edge TEXT PRIMARY KEY,
            sent_upto BIGINT NOT NULL,
            first_seen DOUBLE PRECISION NOT NULL,
            last_seen DOUBLE PRECISION NOT NULL,
            snapshots BIGINT NOT NULL DEFAULT 0,
            ranges BIGINT NOT NULL DEFAULT 0
        );
        """,
        # Events wait here, unnumbered, until L{sequence} numbers them (in
        # the order of their ids) into sync_log.
        """
        CREATE TABLE sync_pending (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            data TEXT NOT NULL,
            command_id TEXT,
            logged_at REAL NOT NULL
        );
        """,
        # How far each edge was sent, apart from sync_edges: the jobs'
        # writers read sync_edges (the active edges), and on PostgreSQL a
        # publisher that updated a row they read made them abort.
        """
        CREATE TABLE sync_sent (
            edge TEXT PRIMARY KEY,
            sent_upto BIGINT NOT NULL
        );
        INSERT INTO sync_sent (edge, sent_upto) SELECT edge, sent_upto FROM sync_edges;
        """,
    ],
)

#: Each edge's progress: C{sync_sent}'s, else the head when it was first
#: seen (C{sync_edges.sent_upto}).
_EDGES = (
    "SELECT e.edge, COALESCE(s.sent_upto, e.sent_upto) AS sent_upto, e.first_seen, e.last_seen, e.snapshots, "
    "e.ranges FROM sync_edges e LEFT JOIN sync_sent s ON s.edge = e.edge"
)

#: Events numbered per statement batch by L{sequence}.
SEQUENCE_BATCH = 1000

#: Keep one C{sync.events} message well under the broker's comfortable
#: size (REFERENCE: stay well under 1 MiB).
MAX_MESSAGE_BYTES = 256 * 1024


class InvalidEvent(ValueError):
    """
    An event does not match its schema: it is refused here, because in the
    log it would be refused by every edge, forever.
    """


class EventLog:
    """
    Appends the registry's changes, numbered, in the caller's transaction.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._validators = {
            kind: Draft202012Validator(schema) for kind, schema in event_data_schemas().items()
        }

    def now(self) -> float:
        """
        The time events are logged at.
        """
        return self._clock.seconds()

    def append(self, conn: Any, kind: str, data: dict[str, Any], command_id: str | None = None) -> int:
        """
        Log one event, to be numbered by L{sequence} once committed; return
        its pending id (not its number).  Nothing here is shared with other
        writers but the table it inserts into.

        @raise InvalidEvent: C{data} does not match the kind's schema.
        """
        validator = self._validators.get(kind)
        if validator is None:
            raise InvalidEvent(f"unknown event kind {kind!r}")
        error = best_match(validator.iter_errors(data))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "data"
            raise InvalidEvent(f"{kind}: {where}: {error.message}")
        row = conn.execute(
            "INSERT INTO sync_pending (kind, data, command_id, logged_at) VALUES (?, ?, ?, ?) RETURNING id",
            (kind, encode_json(data), command_id, self._clock.seconds()),
        ).fetchone()
        return int(row[0])

    def put(self, conn: Any, table: Table, key: tuple[Any, ...], command_id: str | None = None) -> int:
        """
        Log the current state of one row of C{table} (it must exist).
        """
        where = " AND ".join(f"{column} = ?" for column in table.key)
        row = conn.execute(
            f"SELECT {', '.join(table.columns)} FROM {table.name} WHERE {where}", key
        ).fetchone()
        if row is None:
            raise LookupError(f"{table.name} {key} does not exist")
        return self.append(conn, f"{table.kind}.put", table.to_wire(row), command_id)

    def delete(self, conn: Any, table: Table, key: tuple[Any, ...], command_id: str | None = None) -> int:
        return self.append(conn, f"{table.kind}.delete", dict(zip(table.key, key, strict=True)), command_id)


def head(conn: Any) -> int:
    """
    The last numbered event (events still pending are not counted: see
    L{sequence}).
    """
    return int(conn.execute("SELECT value FROM sync_counter WHERE name = 'head'").fetchone()[0])


def sequence(conn: Any) -> int:
    """
    Number the pending events this transaction sees, in the order of their
    ids, after the head; return the new head.

    Only this updates the counter row: concurrent runs (publishers of
    several processes) conflict with each other, not with the registry's
    writers, and on PostgreSQL the loser runs again and finds nothing left.
    """
    last = head(conn)
    while True:
        rows = conn.execute(
            "SELECT id, kind, data, command_id, logged_at FROM sync_pending ORDER BY id LIMIT ?",
            (SEQUENCE_BATCH,),
        ).fetchall()
        if not rows:
            return last
        first = last + 1
        last = int(conn.execute(
            "UPDATE sync_counter SET value = value + ? WHERE name = 'head' RETURNING value", (len(rows),)
        ).fetchone()[0])
        assert last == first + len(rows) - 1
        conn.executemany(
            "INSERT INTO sync_log (seq, kind, data, command_id, logged_at) VALUES (?, ?, ?, ?, ?)",
            [(first + i, row[1], row[2], row[3], row[4]) for i, row in enumerate(rows)],
        )
        conn.executemany("DELETE FROM sync_pending WHERE id = ?", [(row[0],) for row in rows])
        if len(rows) < SEQUENCE_BATCH:
            return last


def horizon(conn: Any) -> int:
    """
    The last pruned event: events after it are still in the log.
    """
    return int(conn.execute("SELECT value FROM sync_counter WHERE name = 'horizon'").fetchone()[0])


def events(conn: Any, after: int, upto: int) -> list[dict[str, Any]]:
    return [
        {"seq": int(row[0]), "kind": row[1], "data": json.loads(row[2]), "command_id": row[3]}
        for row in conn.execute(
            "SELECT seq, kind, data, command_id FROM sync_log WHERE seq > ? AND seq <= ? ORDER BY seq",
            (after, upto),
        )
    ]


def prune(conn: Any, keep: int) -> int:
    """
    Forget all but the last C{keep} events; edges further behind get a
    snapshot.  Returns the new horizon.
    """
    cut = sequence(conn) - keep
    if cut <= horizon(conn):
        return horizon(conn)
    # A command's outcome is found by its event while that is in the log;
    # the commands whose outcome events go keep their number themselves.
    conn.execute(
        f"UPDATE commands SET seq = (SELECT l.seq FROM sync_log l WHERE l.command_id = commands.command_id "
        f"AND l.kind IN {_OUTCOME_KINDS} AND l.seq <= ?) "
        f"WHERE seq = 0 AND command_id IN (SELECT command_id FROM sync_log WHERE seq <= ? AND kind IN "
        f"{_OUTCOME_KINDS})",
        (cut, cut),
    )
    conn.execute("DELETE FROM sync_log WHERE seq <= ?", (cut,))
    conn.execute("UPDATE sync_counter SET value = ? WHERE name = 'horizon'", (cut,))
    return cut


def _sent(conn: Any, edge: str, upto: int) -> None:
    conn.execute(
        "INSERT INTO sync_sent (edge, sent_upto) VALUES (?, ?) "
        "ON CONFLICT (edge) DO UPDATE SET sent_upto = excluded.sent_upto",
        (edge, upto),
    )


def _batches(items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for item in items:
        item_size = len(encode_json(item))
        if batch and (len(batch) == MAX_EVENTS_PER_MESSAGE or size + item_size > MAX_MESSAGE_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch


def send_events(outbox: Any, conn: Any, edge: str, items: list[dict[str, Any]], at_head: int) -> int:
    """
    Put C{items} (consecutive events) for C{edge}; return how many messages.
    """
    count = 0
    for batch in _batches(items):
        outbox.put(conn, EVENTS, {"events": batch, "head": at_head}, to=to_edge(edge))
        count += 1
    return count


class SyncPublisher:
    """
    Sends every active edge the events it has not been sent.

    @param inactive_after: an edge not heard from for this long is no
        longer sent events (its queue would only grow); its next
        C{sync.hello} brings it up to date.
    @param max_per_run: events per edge per transaction.
    """

    def __init__(
        self, outbox: IOutbox, clock: IReactorTime, *, inactive_after: float = 7 * 86400,
        max_per_run: int = 5000,
    ) -> None:
        self._outbox = outbox
        self._clock = clock
        self._inactive_after = inactive_after
        self._max_per_run = max_per_run

    def publish(self, conn: Any) -> int:
        """
        One round, in one transaction; returns how many messages were put.
        Only numbered events are sent: L{sequence} first.
        """
        now_head = head(conn)
        since = self._clock.seconds() - self._inactive_after
        edges = conn.execute(
            f"SELECT edge, sent_upto FROM ({_EDGES}) e WHERE sent_upto < ? AND last_seen >= ? ORDER BY edge",
            (now_head, since),
        ).fetchall()
        messages = 0
        for edge, sent in edges:
            upto = min(now_head, int(sent) + self._max_per_run)
            messages += send_events(self._outbox, conn, edge, events(conn, int(sent), upto), now_head)
            _sent(conn, edge, upto)
        return messages


class SyncResponder:
    """
    Answers the edges' C{sync.hello} and C{sync.range} (inbox handlers).

    @param range_limit: an edge further behind than this many events gets a
        snapshot rather than the events.
    """

    log = Logger()

    def __init__(self, outbox: IOutbox, clock: IReactorTime, *, range_limit: int = 20_000) -> None:
        self._outbox = outbox
        self._clock = clock
        self._range_limit = range_limit

    def register(self, inbox: Any) -> None:
        inbox.register(HELLO, self.on_hello)
        inbox.register(RANGE, self.on_range)

    def on_hello(self, conn: Any, message: Envelope) -> None:
        body = message.body
        edge, applied = body["edge"], int(body["applied"])
        now_head = head(conn)
        self._seen(conn, edge, sent_upto=now_head)
        if body["snapshot"] or applied == 0 or applied > now_head or self._too_far(conn, applied, now_head):
            reset = applied > now_head
            self.send_snapshot(conn, edge, body["pending"], after=0 if reset else applied, reset=reset)
        elif applied < now_head:
            self._send_range(conn, edge, applied, now_head)

    def on_range(self, conn: Any, message: Envelope) -> None:
        body = message.body
        edge, after = body["edge"], int(body["after"])
        now_head = head(conn)
        upto = min(int(body["upto"]), now_head)
        self._seen(conn, edge)
        if after >= upto:
            return
        if self._too_far(conn, after, upto):
            self.send_snapshot(conn, edge, [], after=after)
        else:
            self._send_range(conn, edge, after, upto)

    def _too_far(self, conn: Any, after: int, upto: int) -> bool:
        return after < horizon(conn) or upto - after > self._range_limit

    def _seen(self, conn: Any, edge: str, sent_upto: int | None = None) -> None:
        now = self._clock.seconds()
        conn.execute(
            "INSERT INTO sync_edges (edge, sent_upto, first_seen, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (edge) DO UPDATE SET last_seen = excluded.last_seen",
            (edge, sent_upto if sent_upto is not None else head(conn), now, now),
        )
        if sent_upto is not None:
            # Everything up to here reaches the edge through this answer;
            # the publisher carries on from it.
            _sent(conn, edge, sent_upto)

    def _send_range(self, conn: Any, edge: str, after: int, upto: int) -> None:
        conn.execute("UPDATE sync_edges SET ranges = ranges + 1 WHERE edge = ?", (edge,))
        send_events(self._outbox, conn, edge, events(conn, after, upto), head(conn))

    def send_snapshot(
        self, conn: Any, edge: str, pending: list[str], *, after: int = 0, reset: bool = False
    ) -> str:
        """
        Put a consistent copy of the registry for C{edge}, in parts; the
        transaction's view is the snapshot, C{upto} its log position.

        The snapshot skips the log, so it carries the answers to the edge's
        commands the edge may not have seen: those logged after C{after}
        (the edge's position), and those named in C{pending}.
        """
        snapshot_id = uuid.uuid4().hex
        # Everything this transaction sees is in the snapshot: so is its
        # number.
        upto = sequence(conn)
        parts: list[dict[str, list[dict[str, Any]]]] = [{}]
        count = 0
        for table in TABLES:
            order = ", ".join(table.key)
            for row in conn.execute(f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {order}"):
                if count == MAX_ROWS_PER_PART:
                    parts.append({})
                    count = 0
                parts[-1].setdefault(table.name, []).append(table.to_wire(row))
                count += 1
        outcomes = _outcomes(conn, edge, after, upto, pending)
        for number, tables in enumerate(parts, start=1):
            self._outbox.put(
                conn, SNAPSHOT,
                {
                    "snapshot_id": snapshot_id, "part": number, "parts": len(parts), "upto": upto,
                    "reset": reset, "tables": tables, "outcomes": outcomes if number == 1 else [],
                },
                to=to_edge(edge),
            )
        conn.execute("UPDATE sync_edges SET snapshots = snapshots + 1 WHERE edge = ?", (edge,))
        self.log.info(
            "snapshot {id} for edge {edge} at {upto}: {parts} parts",
            id=snapshot_id, edge=edge, upto=upto, parts=len(parts),
        )
        return snapshot_id


#: The kinds of the events that answer an edge's command.
_OUTCOME_KINDS = "('command.applied', 'command.rejected')"


def _outcomes(conn: Any, edge: str, after: int, upto: int, pending: list[str]) -> list[dict[str, Any]]:
    """
    The answers to C{edge}'s commands numbered after C{after} up to
    C{upto}, and to those named in C{pending} up to C{upto}.  A command's
    number is its outcome event's in the log (C{commands.seq} is 0 then),
    or C{commands.seq} once that event was pruned (or for commands answered
    before events were numbered after their commit).
    """
    numbered = (
        "SELECT c.command_id, c.status, c.reason, c.code, c.edge, "
        "CASE WHEN c.seq > 0 THEN c.seq ELSE l.seq END AS seq FROM commands c "
        f"LEFT JOIN sync_log l ON l.command_id = c.command_id AND l.kind IN {_OUTCOME_KINDS} AND c.seq = 0"
    )
    rows = {
        row[0]: row
        for row in conn.execute(
            f"SELECT * FROM ({numbered}) n WHERE n.edge = ? AND n.seq > ? AND n.seq <= ?", (edge, after, upto),
        )
    }
    for command_id in pending:
        row = conn.execute(
            f"SELECT * FROM ({numbered}) n WHERE n.command_id = ? AND n.seq <= ?", (command_id, upto),
        ).fetchone()
        if row is not None:
            rows[command_id] = row
    return [
        {"command_id": r[0], "status": r[1], "reason": r[2], "code": r[3]}
        for _, r in sorted(rows.items())
    ]


def edges(conn: Any) -> list[dict[str, Any]]:
    """
    The edges the cloud knows, for operators.
    """
    return [dict(row) for row in conn.execute(f"{_EDGES} ORDER BY e.edge")]


class SyncPublishing(TimerService):
    """
    Runs L{SyncPublisher} every C{interval} seconds (and prunes the log
    every C{prune_every} seconds to its last C{keep} events).  Errors are
    logged and the timer carries on.
    """

    log = Logger()

    def __init__(
        self, db: Database, publisher: SyncPublisher, outbox: IOutbox, clock: IReactorTime, *,
        interval: float = 0.5, keep: int = 1_000_000, prune_every: float = 3600.0,
    ) -> None:
        super().__init__(interval, self.tick)
        self.clock = clock
        self._clock = clock
        self._db = db
        self._publisher = publisher
        self._outbox = outbox
        self._keep = keep
        self._prune_every = prune_every
        self._pruned_at = clock.seconds()

    def tick(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._tick())

    async def _tick(self) -> None:
        try:
            # Numbering is a short transaction of its own, which conflicts
            # only with other processes' numbering (the counter row).
            await self._db.run(sequence)
            if await self._db.run(self._publisher.publish):
                self._outbox.wake()
            if self._clock.seconds() - self._pruned_at >= self._prune_every:
                self._pruned_at = self._clock.seconds()
                await self._db.run(prune, self._keep)
        except Exception:
            self.log.failure("sync publishing failed; trying again next round")
