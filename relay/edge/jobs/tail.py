"""
The tail of each job's log at the edge, kept from the cloud's C{job.log}
batches (L{relay.job_messages}).

Per job the edge holds one contiguous range C{[start, end)} of the log of
its latest attempt, at most C{limit} bytes (the oldest are dropped as new
ones come), in chunks as they arrived.  A batch is placed by its offset:

  - one for an older attempt than held is dropped; one for a newer attempt
    starts the tail over;
  - bytes below C{end} are held already and dropped (a batch received
    twice, or overlapping), the rest is appended;
  - a batch that starts past C{end} (one before it is missing: reordered,
    still on its way, or lost) waits, and is appended once the gap is
    filled (the edge asks the cloud for the missing bytes: L{gap}).
    If the gap is not filled within C{gap_wait} seconds (L{LogTails.tick}),
    or the bytes waiting beyond it reach C{limit} (the gap then falls out
    of the tail anyway), the tail restarts at the first waiting batch: the
    range held says where it now starts.

Every method runs inside the caller's transaction (the inbox's, or a
timer's) and returns the bytes newly appended, for the live events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime

from relay.db import Schema

SCHEMA = Schema(
    "job_logs",
    [
        """
        CREATE TABLE job_log_tails (
            job_id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            start_at BIGINT NOT NULL,
            end_at BIGINT NOT NULL,
            eof INTEGER NOT NULL DEFAULT 0,
            updated_at DOUBLE PRECISION NOT NULL,
            asked_at DOUBLE PRECISION NOT NULL DEFAULT 0
        );
        CREATE TABLE job_log_chunks (
            job_id TEXT NOT NULL,
            position BIGINT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (job_id, position)
        );
        CREATE TABLE job_log_waiting (
            job_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            position BIGINT NOT NULL,
            data BLOB NOT NULL,
            eof INTEGER NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (job_id, attempt, position)
        );
        CREATE INDEX job_log_waiting_received ON job_log_waiting (received_at);
        """,
    ],
)


@dataclass(frozen=True)
class Appended:
    """
    Log bytes newly held (for C{job.log} events): C{data} starts at
    C{offset}; C{eof} when the log is now complete.
    """

    job_id: str
    project_id: str
    attempt: int
    offset: int
    data: bytes
    eof: bool

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class Held:
    """
    What the edge holds of a job's log: bytes C{start} to C{end} of
    attempt C{attempt}, C{eof} once the log is complete.
    """

    project_id: str
    attempt: int
    start: int
    end: int
    eof: bool


class LogTails:
    """
    The tails, bounded to C{limit} bytes each.

    @param gap_wait: seconds a batch waits for a missing one before it.
    """

    def __init__(self, clock: IReactorTime, *, limit: int, gap_wait: float) -> None:
        self._clock = clock
        self.limit = limit
        self._gap_wait = gap_wait

    # -- receiving -------------------------------------------------------------

    def receive(
        self, conn: Any, job_id: str, project_id: str, attempt: int, offset: int, data: bytes, eof: bool
    ) -> list[Appended]:
        """
        Place one batch; return what it (and the waiting batches it
        unblocked) added.
        """
        held = self.held(conn, job_id)
        if held is not None and attempt < held.attempt:
            return []
        if held is None or attempt > held.attempt:
            self._forget(conn, job_id, below=attempt)
            conn.execute(
                "INSERT INTO job_log_tails (job_id, project_id, attempt, start_at, end_at, eof, updated_at) "
                "VALUES (?, ?, ?, 0, 0, 0, ?)",
                (job_id, project_id, attempt, self._clock.seconds()),
            )
            held = Held(project_id, attempt, 0, 0, False)
        if offset > held.end:
            conn.execute(
                "INSERT INTO job_log_waiting (job_id, attempt, position, data, eof, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, attempt, position) DO NOTHING",
                (job_id, attempt, offset, data, int(eof), self._clock.seconds()),
            )
            waiting = conn.execute(
                "SELECT coalesce(sum(length(data)), 0) FROM job_log_waiting WHERE job_id = ? AND attempt = ?",
                (job_id, attempt),
            ).fetchone()[0]
            if int(waiting) < self.limit:
                return []
            return self._skip_gap(conn, job_id, held)
        appended = self._append(conn, job_id, held, offset, data, eof)
        return appended + self._drain(conn, job_id)

    def _append(
        self, conn: Any, job_id: str, held: Held, offset: int, data: bytes, eof: bool
    ) -> list[Appended]:
        new = data[held.end - offset :]
        now_eof = held.eof or eof
        if not new and now_eof == held.eof:
            return []  # held already
        end = held.end + len(new)
        if new:
            conn.execute(
                "INSERT INTO job_log_chunks (job_id, position, data) VALUES (?, ?, ?)", (job_id, held.end, new)
            )
            # Chunks wholly before the tail's window go; the window starts
            # inside the first one left (or at it).
            conn.execute(
                "DELETE FROM job_log_chunks WHERE job_id = ? AND position + length(data) <= ?",
                (job_id, end - self.limit),
            )
        first = conn.execute("SELECT min(position) FROM job_log_chunks WHERE job_id = ?", (job_id,)).fetchone()[0]
        start = max(end - self.limit, held.start if first is None else int(first))
        conn.execute(
            "UPDATE job_log_tails SET start_at = ?, end_at = ?, eof = ?, updated_at = ? WHERE job_id = ?",
            (start, end, int(now_eof), self._clock.seconds(), job_id),
        )
        return [Appended(job_id, held.project_id, held.attempt, held.end, new, now_eof)]

    def _drain(self, conn: Any, job_id: str) -> list[Appended]:
        """
        Append the waiting batches the tail now reaches.
        """
        appended: list[Appended] = []
        while True:
            held = self.held(conn, job_id)
            assert held is not None
            row = conn.execute(
                "SELECT position, data, eof FROM job_log_waiting WHERE job_id = ? AND attempt = ? "
                "AND position <= ? ORDER BY position LIMIT 1",
                (job_id, held.attempt, held.end),
            ).fetchone()
            if row is None:
                return appended
            conn.execute(
                "DELETE FROM job_log_waiting WHERE job_id = ? AND attempt = ? AND position = ?",
                (job_id, held.attempt, row[0]),
            )
            appended += self._append(conn, job_id, held, int(row[0]), bytes(row[1]), bool(row[2]))

    def _skip_gap(self, conn: Any, job_id: str, held: Held) -> list[Appended]:
        """
        Give up on the missing bytes: the tail restarts at the first
        waiting batch.
        """
        first = conn.execute(
            "SELECT min(position) FROM job_log_waiting WHERE job_id = ? AND attempt = ?", (job_id, held.attempt)
        ).fetchone()[0]
        if first is None:
            return []
        conn.execute("DELETE FROM job_log_chunks WHERE job_id = ?", (job_id,))
        conn.execute(
            "UPDATE job_log_tails SET start_at = ?, end_at = ? WHERE job_id = ?", (int(first), int(first), job_id)
        )
        return self._drain(conn, job_id)

    def gap(self, conn: Any, job_id: str) -> tuple[int, int, int] | None:
        """
        The job's open gap, as C{(attempt, after, upto)}: the bytes the
        tail lacks before its first waiting batch (at most C{limit} of
        them: older ones would fall out of the tail anyway); C{None} if
        there is none.
        """
        held = self.held(conn, job_id)
        if held is None:
            return None
        first = conn.execute(
            "SELECT min(position) FROM job_log_waiting WHERE job_id = ? AND attempt = ?", (job_id, held.attempt)
        ).fetchone()[0]
        if first is None:
            return None
        return held.attempt, max(held.end, int(first) - self.limit), int(first)

    def asking(self, conn: Any, job_id: str, every: float) -> bool:
        """
        Whether to ask for the job's gap now (not asked within C{every}
        seconds); if so, it counts as asked.
        """
        now = self._clock.seconds()
        changed = conn.execute(
            "UPDATE job_log_tails SET asked_at = ? WHERE job_id = ? AND asked_at <= ?", (now, job_id, now - every)
        ).rowcount
        return bool(changed)

    def open_gaps(self, conn: Any) -> list[str]:
        """
        The jobs whose tail has a gap (batches waiting).
        """
        return [row[0] for row in conn.execute("SELECT DISTINCT job_id FROM job_log_waiting ORDER BY job_id")]

    def tick(self, conn: Any) -> list[Appended]:
        """
        Restart the tails whose gap stayed open longer than C{gap_wait}.
        """
        stale = conn.execute(
            "SELECT DISTINCT job_id FROM job_log_waiting WHERE received_at <= ? ORDER BY job_id",
            (self._clock.seconds() - self._gap_wait,),
        ).fetchall()
        appended: list[Appended] = []
        for (job_id,) in stale:
            held = self.held(conn, job_id)
            if held is None:
                conn.execute("DELETE FROM job_log_waiting WHERE job_id = ?", (job_id,))
                continue
            conn.execute("DELETE FROM job_log_waiting WHERE job_id = ? AND attempt != ?", (job_id, held.attempt))
            appended += self._skip_gap(conn, job_id, held)
        return appended

    def _forget(self, conn: Any, job_id: str, below: int) -> None:
        conn.execute("DELETE FROM job_log_chunks WHERE job_id = ?", (job_id,))
        conn.execute("DELETE FROM job_log_tails WHERE job_id = ?", (job_id,))
        conn.execute("DELETE FROM job_log_waiting WHERE job_id = ? AND attempt < ?", (job_id, below))

    def forget(self, conn: Any, job_id: str) -> None:
        """
        Drop everything held for a job (it was deleted).
        """
        self._forget(conn, job_id, below=1 << 62)

    # -- reading ---------------------------------------------------------------

    def held(self, conn: Any, job_id: str) -> Held | None:
        row = conn.execute(
            "SELECT project_id, attempt, start_at, end_at, eof FROM job_log_tails WHERE job_id = ?", (job_id,)
        ).fetchone()
        return None if row is None else Held(row[0], int(row[1]), int(row[2]), int(row[3]), bool(row[4]))

    def read(self, conn: Any, job_id: str, offset: int) -> tuple[Held, bytes] | None:
        """
        What is held of the log from C{offset} (from the tail's start if
        C{offset} is before it), with the range held; C{None} if nothing is.
        """
        held = self.held(conn, job_id)
        if held is None:
            return None
        begin = max(offset, held.start)
        if begin >= held.end:
            return held, b""
        parts = [
            (int(position), bytes(data))
            for position, data in conn.execute(
                "SELECT position, data FROM job_log_chunks WHERE job_id = ? AND position + length(data) > ? "
                "ORDER BY position",
                (job_id, begin),
            )
        ]
        data = b"".join(parts_data for _, parts_data in parts)
        return held, data[begin - parts[0][0] :] if parts else b""
