"""
The dead letters: the messages an inbox could not apply, kept for people.

A poison message (not an envelope, an unknown type, a body its schema
rejects, or one whose handler failed too often) is buried here, in the
inbox's transaction, with the reason (L{bury}); C{relay dead-letters}
lists them (L{listing}) and marks them for replay (L{request_replay}) or
drops them (L{drop}); the running process's inbox replays what was marked
(L{relay.link.inbox.Inbox.replay_requested}, through L{replays_due} and
L{mark_replayed}).

The C{dead_letter} table is part of the inbox's schema
(L{relay.link.inbox.SCHEMA}): both sides' databases have it.  Every
function here runs on the database thread, inside the caller's
transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Any


def bury(
    conn: sqlite3.Connection, message_id: str | None, type: str | None, queue: str, reason: str,
    body: bytes, payload: bytes | None, now: float,
) -> None:
    """
    Keep a message that will not be applied, and forget its failed attempts.

    @param message_id: the envelope's id, or C{None} when the body is no
        envelope.
    @param type: the envelope's type, if it could be read.
    """
    conn.execute(
        "INSERT INTO dead_letter (message_id, type, queue, reason, body, payload, received) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (message_id, type, queue, reason, body, payload, now),
    )
    if message_id is not None:
        conn.execute("DELETE FROM inbox_failure WHERE id = ?", (message_id,))


def count(conn: sqlite3.Connection) -> int:
    """
    How many dead letters await attention.
    """
    return int(conn.execute("SELECT count(*) FROM dead_letter WHERE state = 'dead'").fetchone()[0])


def replays_due(conn: sqlite3.Connection, queue: str) -> list[tuple[int, bytes, bytes | None]]:
    """
    The dead letters of C{queue} marked for replay, oldest first: their
    numbers, envelopes and payloads.
    """
    return [
        (row[0], bytes(row[1]), None if row[2] is None else bytes(row[2]))
        for row in conn.execute(
            "SELECT number, body, payload FROM dead_letter WHERE state = 'replay' AND queue = ? "
            "ORDER BY number",
            (queue,),
        )
    ]


def mark_replayed(conn: sqlite3.Connection, number: int, state: str) -> None:
    """
    Record how the replay of dead letter C{number} went: C{"replayed"}, or
    C{"dead"} when it failed again (it was then buried anew, as a new dead
    letter, and this one is done).
    """
    if state == "replayed":
        conn.execute("UPDATE dead_letter SET state = 'replayed' WHERE number = ?", (number,))
        return
    conn.execute("UPDATE dead_letter SET state = 'dropped' WHERE number = ?", (number,))


def listing(conn: sqlite3.Connection, state: str | None = "dead") -> list[dict[str, Any]]:
    """
    The dead letters in C{state} (all of them for C{None}), by number, for
    C{relay dead-letters list}.
    """
    query = (
        "SELECT number, message_id, type, queue, reason, received, state, "
        "length(body) + coalesce(length(payload), 0) AS size FROM dead_letter"
    )
    args: tuple[Any, ...] = ()
    if state is not None:
        query += " WHERE state = ?"
        args = (state,)
    return [dict(row) for row in conn.execute(query + " ORDER BY number", args)]


def request_replay(conn: sqlite3.Connection, numbers: list[int]) -> int:
    """
    Mark dead letters for replay by the running process; return how many.
    """
    return _move(conn, numbers, "replay")


def drop(conn: sqlite3.Connection, numbers: list[int]) -> int:
    """
    Give up on dead letters; return how many.
    """
    return _move(conn, numbers, "dropped")


def _move(conn: sqlite3.Connection, numbers: list[int], state: str) -> int:
    # Only a letter still dead moves: one replayed or dropped stays so.
    changed = 0
    for number in numbers:
        changed += conn.execute(
            "UPDATE dead_letter SET state = ? WHERE number = ? AND state = 'dead'", (state, number)
        ).rowcount
    return changed
