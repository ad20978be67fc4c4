"""
The transfer journal, in the edge's database: for each staged upload, its
transfer's state, the part plan with each part's MD5, and which parts S3
has confirmed.  A part is marked confirmed only after S3 answered its PUT
with the expected ETag, so after a crash the journal may lag S3 (the
resumed transfer asks S3 and catches up), never lead it.

A transfer's states (C{transfer_jobs.state}):

  - C{planned}: recorded; the digests are not computed yet.
  - C{ready}: plan and digests known; C{transfer.begin} not sent.
  - C{beginning}: C{transfer.begin} sent, waiting for C{transfer.started}.
  - C{sending}: the multipart upload is open; parts are being PUT.
  - C{finishing}: every part confirmed; C{transfer.finish} sent.
  - C{registered}: C{file.registered} arrived; the spool file is erased next.
  - C{done}: erased.
  - C{failed}: the transfer cannot go on (the cloud refused the file, S3
    keeps refusing a part, the staged copy is damaged); the spool file is
    kept.

Only the moves in L{MOVES} are made; everything that changes a state
goes through this module.

Starting over (S3 lost the multipart upload) gives the transfer a new id,
forgets every confirmation and goes back to C{ready}.  Its owner retrying
a failed transfer does the same from C{planned} (the digests are computed
again from the spool copy) with the restart count at zero.
"""

from __future__ import annotations

import base64
import enum
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.db import Schema
from relay.edge.transfer.planner import Digests, PartPlan

SCHEMA = Schema(
    "transfer",
    [
        """
        CREATE TABLE transfer_jobs (
            upload_id TEXT PRIMARY KEY,
            spool_id TEXT NOT NULL,
            owner TEXT NOT NULL,
            project TEXT NOT NULL,
            filename TEXT NOT NULL,
            filetype TEXT NOT NULL,
            size INTEGER NOT NULL,
            transfer_id TEXT NOT NULL,
            state TEXT NOT NULL,
            part_size INTEGER NOT NULL DEFAULT 0,
            part_count INTEGER NOT NULL DEFAULT 0,
            sha256 TEXT NOT NULL DEFAULT '',
            confirmed_bytes INTEGER NOT NULL DEFAULT 0,
            restarts INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            updated REAL NOT NULL
        );
        CREATE INDEX transfer_jobs_state ON transfer_jobs (state);
        CREATE TABLE transfer_parts (
            upload_id TEXT NOT NULL REFERENCES transfer_jobs (upload_id) ON DELETE CASCADE,
            number INTEGER NOT NULL,
            "offset" INTEGER NOT NULL,
            size INTEGER NOT NULL,
            md5 TEXT NOT NULL,
            confirmed INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (upload_id, number)
        );
        """,
    ],
)


class JobState(enum.StrEnum):
    PLANNED = "planned"
    READY = "ready"
    BEGINNING = "beginning"
    SENDING = "sending"
    FINISHING = "finishing"
    REGISTERED = "registered"
    DONE = "done"
    FAILED = "failed"


#: The moves a transfer's state may make (L{set_state} refuses any other;
#: staying put is always allowed).  C{ready} again means starting over
#: (L{restart}), C{planned} again its owner's retry (L{start_again}).
MOVES: dict[JobState, frozenset[JobState]] = {
    JobState.PLANNED: frozenset({JobState.READY, JobState.FAILED}),
    JobState.READY: frozenset({JobState.BEGINNING, JobState.FAILED}),
    JobState.BEGINNING: frozenset({JobState.SENDING, JobState.REGISTERED, JobState.READY, JobState.FAILED}),
    JobState.SENDING: frozenset({JobState.FINISHING, JobState.REGISTERED, JobState.READY, JobState.FAILED}),
    JobState.FINISHING: frozenset({JobState.SENDING, JobState.REGISTERED, JobState.READY, JobState.FAILED}),
    JobState.REGISTERED: frozenset({JobState.DONE}),
    JobState.DONE: frozenset(),
    # The cloud's word that it has the file is the last one.
    JobState.FAILED: frozenset({JobState.REGISTERED, JobState.PLANNED}),
}


class IllegalMove(ValueError):
    """A state change the table of moves (L{MOVES}) does not allow."""


def check_move(current: JobState, new: JobState) -> None:
    if new is not current and new not in MOVES[current]:
        raise IllegalMove(f"a transfer cannot move from {current.value} to {new.value}")


def _move(conn: sqlite3.Connection, upload_id: str, new: JobState) -> None:
    row = conn.execute("SELECT state FROM transfer_jobs WHERE upload_id = ?", (upload_id,)).fetchone()
    if row is not None:
        check_move(JobState(row[0]), new)


#: States in which a transfer still has work to do after a restart.
UNFINISHED = (JobState.PLANNED, JobState.READY, JobState.BEGINNING, JobState.SENDING,
              JobState.FINISHING, JobState.REGISTERED)


@dataclass(frozen=True)
class Job:
    """One upload's transfer (a row of C{transfer_jobs})."""

    upload_id: str
    spool_id: str
    owner: str
    project: str
    filename: str
    filetype: str
    size: int
    transfer_id: str
    state: JobState
    part_size: int
    part_count: int
    sha256: str
    confirmed_bytes: int
    restarts: int
    error: str

    @property
    def plan(self) -> PartPlan:
        return PartPlan(self.size, self.part_size, self.part_count)


@dataclass(frozen=True)
class Confirmed:
    """What S3 has confirmed of a transfer: bytes, and parts."""

    bytes: int
    parts: int


@dataclass(frozen=True)
class JournalPart:
    number: int
    offset: int
    size: int
    md5: str
    confirmed: bool


_JOB_COLUMNS = (
    "upload_id, spool_id, owner, project, filename, filetype, size, transfer_id, state, part_size, "
    "part_count, sha256, confirmed_bytes, restarts, error"
)


def _job(row: Any) -> Job:
    values = list(row)
    values[8] = JobState(values[8])
    return Job(*values)


def add_job(conn: sqlite3.Connection, upload: Any, transfer_id: str, now: float) -> bool:
    """
    Record a staged upload (a L{relay.edge.uploads.handoff.StagedUpload});
    returns whether it is new.
    """
    cursor = conn.execute(
        "INSERT OR IGNORE INTO transfer_jobs (upload_id, spool_id, owner, project, filename, filetype, "
        "size, transfer_id, state, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?, ?)",
        (upload.upload_id, upload.spool_id, upload.owner, upload.project, upload.filename,
         upload.filetype, upload.length, transfer_id, now, now),
    )
    return cursor.rowcount == 1


def job(conn: sqlite3.Connection, upload_id: str) -> Job | None:
    row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM transfer_jobs WHERE upload_id = ?", (upload_id,)).fetchone()
    return None if row is None else _job(row)


def job_by_transfer(conn: sqlite3.Connection, transfer_id: str) -> Job | None:
    row = conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM transfer_jobs WHERE transfer_id = ?", (transfer_id,)
    ).fetchone()
    return None if row is None else _job(row)


def unfinished(conn: sqlite3.Connection) -> list[Job]:
    marks = ",".join("?" * len(UNFINISHED))
    return [_job(row) for row in conn.execute(
        f"SELECT {_JOB_COLUMNS} FROM transfer_jobs WHERE state IN ({marks}) ORDER BY created",
        tuple(s.value for s in UNFINISHED),
    )]


def set_plan(conn: sqlite3.Connection, upload_id: str, plan: PartPlan, digests: Digests, now: float) -> None:
    """The digests are computed: store the parts; the job is C{ready}."""
    _move(conn, upload_id, JobState.READY)
    conn.execute("DELETE FROM transfer_parts WHERE upload_id = ?", (upload_id,))
    conn.executemany(
        'INSERT INTO transfer_parts (upload_id, number, "offset", size, md5) VALUES (?, ?, ?, ?, ?)',
        [(upload_id, p.number, p.offset, p.size, md5) for p, md5 in zip(plan.parts(), digests.md5s, strict=True)],
    )
    conn.execute(
        "UPDATE transfer_jobs SET state = 'ready', part_size = ?, part_count = ?, sha256 = ?, "
        "confirmed_bytes = 0, updated = ? WHERE upload_id = ?",
        (plan.part_size, plan.count, digests.sha256, now, upload_id),
    )


def set_state(conn: sqlite3.Connection, upload_id: str, state: JobState, now: float,
              *, transfer_id: str | None = None, error: str | None = None) -> bool:
    """
    Move a job to C{state} (only if its transfer is still C{transfer_id},
    when given); returns whether it moved.

    @raise IllegalMove: the table of moves does not allow it.
    """
    _move(conn, upload_id, state)
    query = "UPDATE transfer_jobs SET state = ?, updated = ?"
    args: list[Any] = [state.value, now]
    if error is not None:
        query += ", error = ?"
        args.append(error)
    query += " WHERE upload_id = ?"
    args.append(upload_id)
    if transfer_id is not None:
        query += " AND transfer_id = ?"
        args.append(transfer_id)
    return conn.execute(query, args).rowcount == 1


def parts(conn: sqlite3.Connection, upload_id: str) -> list[JournalPart]:
    return [
        JournalPart(int(r[0]), int(r[1]), int(r[2]), r[3], bool(r[4]))
        for r in conn.execute(
            'SELECT number, "offset", size, md5, confirmed FROM transfer_parts WHERE upload_id = ? ORDER BY number',
            (upload_id,),
        )
    ]


def _recount(conn: sqlite3.Connection, upload_id: str, now: float) -> Confirmed:
    row = conn.execute(
        "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM transfer_parts WHERE upload_id = ? AND confirmed = 1",
        (upload_id,),
    ).fetchone()
    confirmed = Confirmed(int(row[0]), int(row[1]))
    conn.execute("UPDATE transfer_jobs SET confirmed_bytes = ?, updated = ? WHERE upload_id = ?",
                 (confirmed.bytes, now, upload_id))
    return confirmed


def confirm(conn: sqlite3.Connection, upload_id: str, transfer_id: str, number: int,
            now: float) -> Confirmed | None:
    """
    S3 holds part C{number} of transfer C{transfer_id}: returns what is
    confirmed now, or C{None} if the job has moved on to another transfer.
    """
    if not conn.execute("SELECT 1 FROM transfer_jobs WHERE upload_id = ? AND transfer_id = ?",
                        (upload_id, transfer_id)).fetchone():
        return None
    conn.execute("UPDATE transfer_parts SET confirmed = 1 WHERE upload_id = ? AND number = ?", (upload_id, number))
    return _recount(conn, upload_id, now)


def confirm_many(conn: sqlite3.Connection, upload_id: str, transfer_id: str, numbers: Sequence[int],
                 now: float) -> Confirmed | None:
    """L{confirm} for several parts in one transaction."""
    if not conn.execute("SELECT 1 FROM transfer_jobs WHERE upload_id = ? AND transfer_id = ?",
                        (upload_id, transfer_id)).fetchone():
        return None
    conn.executemany("UPDATE transfer_parts SET confirmed = 1 WHERE upload_id = ? AND number = ?",
                     [(upload_id, n) for n in numbers])
    return _recount(conn, upload_id, now)


def reconcile(conn: sqlite3.Connection, upload_id: str, transfer_id: str,
              held: Mapping[int, tuple[int, str]], now: float) -> Confirmed | None:
    """
    What S3 holds (C{number -> (size, etag)}) decides which parts count as
    confirmed: those with the planned size and MD5.  Returns what is
    confirmed, or C{None} if the job has moved on.
    """
    if not conn.execute("SELECT 1 FROM transfer_jobs WHERE upload_id = ? AND transfer_id = ?",
                        (upload_id, transfer_id)).fetchone():
        return None
    updates = []
    for part in parts(conn, upload_id):
        found = held.get(part.number)
        good = found is not None and found[0] == part.size and found[1] == _md5_hex(part.md5)
        updates.append((int(good), upload_id, part.number))
    conn.executemany("UPDATE transfer_parts SET confirmed = ? WHERE upload_id = ? AND number = ?", updates)
    return _recount(conn, upload_id, now)


def unconfirm(conn: sqlite3.Connection, upload_id: str, transfer_id: str, numbers: Sequence[int],
              now: float) -> bool:
    """S3 does not hold these parts after all (C{incomplete})."""
    if not conn.execute("SELECT 1 FROM transfer_jobs WHERE upload_id = ? AND transfer_id = ?",
                        (upload_id, transfer_id)).fetchone():
        return False
    conn.executemany("UPDATE transfer_parts SET confirmed = 0 WHERE upload_id = ? AND number = ?",
                     [(upload_id, n) for n in numbers])
    _recount(conn, upload_id, now)
    return True


def restart(conn: sqlite3.Connection, upload_id: str, old_transfer_id: str, new_transfer_id: str,
            now: float, reason: str) -> bool:
    """
    Start over under a new transfer id: nothing confirmed, state C{ready}
    (the digests stay: the file has not changed).  Only if the job is
    still on C{old_transfer_id}.
    """
    _move(conn, upload_id, JobState.READY)
    changed = conn.execute(
        "UPDATE transfer_jobs SET transfer_id = ?, state = 'ready', confirmed_bytes = 0, "
        "restarts = restarts + 1, error = ?, updated = ? WHERE upload_id = ? AND transfer_id = ?",
        (new_transfer_id, reason, now, upload_id, old_transfer_id),
    ).rowcount
    if changed:
        conn.execute("UPDATE transfer_parts SET confirmed = 0 WHERE upload_id = ?", (upload_id,))
    return changed == 1


def start_again(conn: sqlite3.Connection, upload_id: str, old_transfer_id: str, new_transfer_id: str,
                now: float) -> bool:
    """
    A failed transfer starts over from scratch under a new transfer id:
    C{planned} (the digests are computed again), nothing confirmed, no
    restarts, no error.  Only if the job is still failed on
    C{old_transfer_id}.
    """
    changed = conn.execute(
        "UPDATE transfer_jobs SET transfer_id = ?, state = 'planned', part_size = 0, part_count = 0, "
        "sha256 = '', confirmed_bytes = 0, restarts = 0, error = '', updated = ? "
        "WHERE upload_id = ? AND transfer_id = ? AND state = 'failed'",
        (new_transfer_id, now, upload_id, old_transfer_id),
    ).rowcount
    if changed:
        conn.execute("DELETE FROM transfer_parts WHERE upload_id = ?", (upload_id,))
    return changed == 1


def _md5_hex(md5_base64: str) -> str:
    return base64.b64decode(md5_base64).hex()
