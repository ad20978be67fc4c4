"""
The edge's replica of the registry, kept by applying the cloud's events.

L{ReplicaApplier} is a plain class whose methods run inside the inbox's
transactions (C{on_events}, C{on_snapshot}) or a timer's (C{tick}); it has
these states, kept in C{replica_sync} so a restart resumes them:

  - B{fresh} (C{synced = 0}): nothing applied; a C{sync.hello} asks for a
    snapshot, and events that arrive meanwhile wait in the buffer.
  - B{current}: position C{applied}; each event numbered C{applied + 1} is
    applied at once, later ones wait in the buffer.
  - B{behind}: a gap (an event waits in the buffer beyond a missing one,
    or the cloud's C{head} is ahead and nothing arrived for a while): a
    C{sync.range} asks for the missing numbers, again after
    C{rerequest_after} seconds while the gap stays.

Applying is idempotent: an event at or below C{applied} is ignored, each
event replaces or deletes a whole row, and a snapshot replaces everything.
Events also answer the edge's own commands (L{relay.edge.replica.pending}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from relay.link.envelope import TO_CLOUD, Envelope
from relay.replication import (
    BY_KIND,
    COMMAND_APPLIED,
    COMMAND_REJECTED,
    PROJECTS,
    TABLES,
    IInbox,
    IOutbox,
    Table,
)
from relay.sync_messages import EVENTS, HELLO, MAX_PENDING_IN_HELLO, RANGE, SNAPSHOT

PREFIX = "replica_"


@dataclass(frozen=True)
class Position:
    """
    Where the replica is: see the module docstring.
    """

    applied: int
    head: int
    synced: bool
    requested_upto: int
    requested_at: float
    hello_at: float
    progress_at: float


def position(conn: Any) -> Position:
    row = conn.execute(
        "SELECT applied, head, synced, requested_upto, requested_at, hello_at, progress_at "
        "FROM replica_sync WHERE id = 1"
    ).fetchone()
    return Position(int(row[0]), int(row[1]), bool(row[2]), int(row[3]), float(row[4]), float(row[5]),
                    float(row[6]))


def _upsert(conn: Any, table: Table, params: list[tuple[Any, ...]]) -> None:
    columns = ", ".join(table.columns)
    marks = ", ".join("?" for _ in table.columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in table.columns if c not in table.key)
    conn.executemany(
        f"INSERT INTO {PREFIX}{table.name} ({columns}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}",
        params,
    )


def _delete(conn: Any, table: Table, data: dict[str, Any]) -> None:
    where = " AND ".join(f"{column} = ?" for column in table.key)
    conn.execute(f"DELETE FROM {PREFIX}{table.name} WHERE {where}", table.key_of(data))
    if table is PROJECTS:
        # The registry's foreign keys cascade; so does the replica.
        for child in ("members", "files", "jobs"):
            conn.execute(f"DELETE FROM {PREFIX}{child} WHERE project_id = ?", (data["id"],))


def apply_event(conn: Any, kind: str, data: dict[str, Any]) -> None:
    """
    Apply one event to the replica tables (or to the pending commands).
    """
    if kind == COMMAND_APPLIED:
        conn.execute("DELETE FROM pending_commands WHERE command_id = ?", (data["command_id"],))
        return
    if kind == COMMAND_REJECTED:
        conn.execute(
            "UPDATE pending_commands SET state = 'rejected', reason = ?, code = ? "
            "WHERE command_id = ? AND state = 'pending'",
            (data["reason"], data["code"], data["command_id"]),
        )
        return
    prefix, op = kind.rsplit(".", 1)
    table = BY_KIND[prefix]
    if op == "put":
        _upsert(conn, table, [table.to_params(data)])
    else:
        _delete(conn, table, data)


class IReplicaObserver(Interface):
    """
    Told what the applier changes (the live event stream listens), on the
    database thread, inside the inbox's transaction.
    """

    def starting() -> None:
        """
        A sync message is about to be applied.
        """

    def applying(conn: Any, kind: str, data: dict[str, Any]) -> None:
        """
        An event is about to be applied: the replica still shows the state
        before it.
        """

    def replacing(conn: Any) -> None:
        """
        A snapshot is about to replace every replica table.
        """

    def settled() -> None:
        """
        The message was applied without error: what was observed since
        L{starting} commits with it.  (A message that fails is not settled.)
        """


@implementer(IReplicaObserver)
class _Unobserved:
    def starting(self) -> None:
        pass

    def applying(self, conn: Any, kind: str, data: dict[str, Any]) -> None:
        pass

    def replacing(self, conn: Any) -> None:
        pass

    def settled(self) -> None:
        pass


class ReplicaApplier:
    """
    Applies C{sync.events} and C{sync.snapshot}; asks for what is missing.

    @param rerequest_after: seconds before a request (range, hello,
        snapshot) that brought nothing is made again.
    @param hello_interval: seconds between unprompted C{sync.hello}s, which
        catch an edge up whose queue lost messages while no new ones came.
    @param observer: told about every change applied (optional).
    """

    log = Logger()

    def __init__(
        self, edge_id: str, outbox: IOutbox, clock: IReactorTime, *, rerequest_after: float = 30.0,
        hello_interval: float = 600.0, observer: IReplicaObserver | None = None,
    ) -> None:
        self.edge_id = edge_id
        self._outbox = outbox
        self._clock = clock
        self._rerequest_after = rerequest_after
        self._hello_interval = hello_interval
        self._observer: IReplicaObserver = observer if observer is not None else _Unobserved()

    def register(self, inbox: IInbox) -> None:
        inbox.register(EVENTS, self.on_events)
        inbox.register(SNAPSHOT, self.on_snapshot)

    # -- events ----------------------------------------------------------------

    def on_events(self, conn: Any, message: Envelope) -> None:
        self._observer.starting()
        body = message.body
        applied = position(conn).applied
        conn.execute("UPDATE replica_sync SET head = ? WHERE id = 1 AND head < ?", (body["head"], body["head"]))
        conn.executemany(
            "INSERT INTO replica_buffer (seq, kind, data, command_id) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (seq) DO NOTHING",
            [
                (event["seq"], event["kind"], json.dumps(event["data"]), event.get("command_id"))
                for event in body["events"]
                if event["seq"] > applied
            ],
        )
        self._drain(conn)
        self._ask_for_gap(conn, force=False)
        self._observer.settled()

    def _drain(self, conn: Any) -> int:
        """
        Apply the buffered events that follow the position, in order.
        """
        state = position(conn)
        if not state.synced:
            return 0
        applied = state.applied
        while True:
            rows = conn.execute(
                "SELECT seq, kind, data FROM replica_buffer WHERE seq > ? ORDER BY seq LIMIT 500",
                (applied,),
            ).fetchall()
            consecutive = 0
            for seq, kind, data in rows:
                if seq != applied + 1:
                    break
                event = json.loads(data)
                self._observer.applying(conn, kind, event)
                apply_event(conn, kind, event)
                applied = seq
                consecutive += 1
            if consecutive < 500:
                break
        conn.execute("DELETE FROM replica_buffer WHERE seq <= ?", (applied,))
        if applied != state.applied:
            conn.execute(
                "UPDATE replica_sync SET applied = ?, progress_at = ? WHERE id = 1",
                (applied, self._clock.seconds()),
            )
        return applied - state.applied

    def _ask_for_gap(self, conn: Any, *, force: bool) -> bool:
        """
        Ask for the events between the position and the first buffered one
        (or, with C{force}, up to the cloud's head); not again while an
        equal request is younger than C{rerequest_after}.
        """
        state = position(conn)
        if not state.synced:
            return False
        first = conn.execute("SELECT min(seq) FROM replica_buffer").fetchone()[0]
        if first is not None:
            upto = int(first) - 1
        elif force:
            upto = state.head
        else:
            return False
        if upto <= state.applied:
            return False
        now = self._clock.seconds()
        if state.requested_upto >= upto and now - state.requested_at < self._rerequest_after:
            return False
        self._outbox.put(conn, RANGE, {"edge": self.edge_id, "after": state.applied, "upto": upto}, to=TO_CLOUD)
        conn.execute("UPDATE replica_sync SET requested_upto = ?, requested_at = ? WHERE id = 1", (upto, now))
        self.log.info(
            "replica behind: asking for events {after}..{upto}", after=state.applied + 1, upto=upto
        )
        return True

    # -- snapshots -------------------------------------------------------------

    def on_snapshot(self, conn: Any, message: Envelope) -> None:
        self._observer.starting()
        body = message.body
        state = position(conn)
        if state.synced and body["upto"] <= state.applied and not body["reset"]:
            return  # nothing the replica does not have already
        conn.execute(
            "INSERT INTO replica_snapshot_parts (snapshot_id, part, parts, upto, reset, payload, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (snapshot_id, part) DO NOTHING",
            (body["snapshot_id"], body["part"], body["parts"], body["upto"], int(body["reset"]),
             json.dumps({"tables": body["tables"], "outcomes": body["outcomes"]}), self._clock.seconds()),
        )
        have = conn.execute(
            "SELECT count(*) FROM replica_snapshot_parts WHERE snapshot_id = ?", (body["snapshot_id"],)
        ).fetchone()[0]
        if have == body["parts"]:
            self._install(conn, body["snapshot_id"], body["upto"], body["reset"])
        self._observer.settled()

    def _install(self, conn: Any, snapshot_id: str, upto: int, reset: bool) -> None:
        self._observer.replacing(conn)
        for table in TABLES:
            conn.execute(f"DELETE FROM {PREFIX}{table.name}")
        rows = conn.execute(
            "SELECT payload FROM replica_snapshot_parts WHERE snapshot_id = ? ORDER BY part", (snapshot_id,)
        ).fetchall()
        for (payload,) in rows:
            part = json.loads(payload)
            for table in TABLES:
                data = part["tables"].get(table.name, [])
                if data:
                    _upsert(conn, table, [table.to_params(row) for row in data])
            for outcome in part["outcomes"]:
                kind = COMMAND_APPLIED if outcome["status"] == "applied" else COMMAND_REJECTED
                answer = {**outcome, "edge": self.edge_id}
                self._observer.applying(conn, kind, answer)
                apply_event(conn, kind, answer)
        if reset:
            conn.execute("DELETE FROM replica_buffer")
        else:
            conn.execute("DELETE FROM replica_buffer WHERE seq <= ?", (upto,))
        conn.execute("DELETE FROM replica_snapshot_parts WHERE snapshot_id = ? OR upto <= ?", (snapshot_id, upto))
        conn.execute(
            "UPDATE replica_sync SET applied = ?, head = CASE WHEN head > ? AND ? = 0 THEN head ELSE ? END, "
            "synced = 1, requested_upto = 0, progress_at = ? WHERE id = 1",
            (upto, upto, int(reset), upto, self._clock.seconds()),
        )
        self.log.info("replica installed snapshot {id} at {upto}", id=snapshot_id, upto=upto)
        self._drain(conn)

    # -- the timer -------------------------------------------------------------

    def tick(self, conn: Any, hello: bool = False) -> bool:
        """
        Housekeeping on a timer: say hello when asked (start, reconnect),
        when still fresh and unanswered, or every C{hello_interval}; ask
        again for a gap that stayed; give up on a snapshot whose parts
        stopped coming.  Returns whether a message was put.
        """
        state = position(conn)
        now = self._clock.seconds()
        stale = conn.execute(
            "SELECT count(*) FROM replica_snapshot_parts WHERE received_at < ?", (now - 4 * self._rerequest_after,)
        ).fetchone()[0]
        if stale:
            conn.execute("DELETE FROM replica_snapshot_parts WHERE received_at < ?", (now - 4 * self._rerequest_after,))
        quiet = now - max(state.hello_at, state.progress_at)
        if hello and not state.synced and quiet < self._rerequest_after:
            # A reconnect while a fresh edge waits for its snapshot: the
            # hello (and the snapshot it asked for) are still on their way,
            # both through outboxes, so asking again would only start a
            # second snapshot, and on a link that resets every few seconds,
            # one per reset.
            hello = False
        if (
            hello
            or stale
            or (not state.synced and quiet >= self._rerequest_after)
            or now - state.hello_at >= self._hello_interval
        ):
            self.hello(conn, snapshot=bool(stale))
            return True
        if now - max(state.progress_at, state.requested_at) >= self._rerequest_after:
            return self._ask_for_gap(conn, force=True)
        return False

    def hello(self, conn: Any, *, snapshot: bool = False) -> None:
        """
        Tell the cloud where the replica is (it answers with what is
        missing) and which commands still await their answer.
        """
        state = position(conn)
        pending = [
            row[0] for row in conn.execute(
                "SELECT command_id FROM pending_commands WHERE state = 'pending' ORDER BY created_at LIMIT ?",
                (MAX_PENDING_IN_HELLO,),
            )
        ]
        self._outbox.put(
            conn, HELLO,
            {"edge": self.edge_id, "applied": state.applied if state.synced else 0, "pending": pending,
             "snapshot": snapshot},
            to=TO_CLOUD,
        )
        conn.execute("UPDATE replica_sync SET hello_at = ? WHERE id = 1", (self._clock.seconds(),))
