"""
A run's log and progress, sent live to the edges as C{job.log} batches
(L{relay.job_messages}).

The run's stored log (what L{relay.cloud.jobs.output.RunLog} writes, the
cut marker included, nothing past it) is what the edges get: a job that
prints without end costs the link no more than its log limit.  Bytes wait
here until the next batch, at most L{BATCH_INTERVAL} after the previous
one; a batch is put in the outbox for every edge heard from lately, in one
transaction that first checks that the run still holds its lease (a stale
worker publishes nothing).  A batch that could not be put stays and goes
with the next one, so each edge gets every stored byte once, in order,
each batch saying where its bytes start.

An edge that noticed a gap asks for the missing bytes (C{job.log.range}).
Whichever cloud process receives the request records it in the registry's
database (L{LogRequests}, table C{job_log_requests}); the worker running
the job looks for requests for it once a second (L{LiveLog.serve}), reads
the range from its log file and sends it again, to that edge only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from relay.cloud.jobs.leases import Claim, JobLeases
from relay.cloud.sync import ACTIVE_WITHIN, active_edges
from relay.db import Database, Schema
from relay.job_messages import BATCH_INTERVAL, JOB_LOG, JOB_LOG_RANGE, MAX_LOG_BYTES
from relay.link.envelope import Envelope, to_edge
from relay.link.outbox import IOutbox

SCHEMA = Schema("job_log_requests", [
    """
    CREATE TABLE job_log_requests (
        job_id TEXT NOT NULL,
        edge TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        after BIGINT NOT NULL,
        upto BIGINT NOT NULL,
        requested_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (job_id, edge)
    );
    CREATE INDEX job_log_requests_at ON job_log_requests (requested_at);
    """,
])

#: A request no worker took (the run ended, or another attempt runs) is
#: forgotten after this long.
REQUEST_TTL = 600.0
#: At most this much of a requested range is sent again (its end: what a
#: tail keeps), so that a request costs the worker a bounded read.
MAX_RANGE_BYTES = 4 << 20

class LogRequests:
    """
    The inbox's handler of C{job.log.range}: records the request for the
    worker running the job (on this process or another).
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock

    def register(self, inbox: Any) -> None:
        inbox.register(JOB_LOG_RANGE, self.on_range)

    def on_range(self, conn: Any, message: Envelope) -> None:
        body, now = message.body, self._clock.seconds()
        if body["after"] >= body["upto"]:
            return
        conn.execute("DELETE FROM job_log_requests WHERE requested_at < ?", (now - REQUEST_TTL,))
        conn.execute(
            "INSERT INTO job_log_requests (job_id, edge, attempt, after, upto, requested_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, edge) DO UPDATE SET attempt = excluded.attempt, "
            "after = excluded.after, upto = excluded.upto, requested_at = excluded.requested_at",
            (body["job_id"], body["edge"], body["attempt"], body["after"], body["upto"], now),
        )


class LiveLog:
    """
    The live side of one run: L{write} is L{RunLog}'s C{on_stored}; L{close}
    sends what is left with C{eof}.

    @param progress: the run's latest progress and its text (C{-1} before
        the first C{::progress} line).
    @param stored: reads bytes C{start} to C{end} of the stored log (for
        requests to send a range again).
    """

    log = Logger()

    def __init__(
        self, reactor: Any, db: Database, outbox: IOutbox, leases: JobLeases, claim: Claim,
        progress: Any, stored: Any = None, *, interval: float = BATCH_INTERVAL,
        active_within: float = ACTIVE_WITHIN,
    ) -> None:
        self._reactor = reactor
        self._db = db
        self._outbox = outbox
        self._leases = leases
        self._claim = claim
        self._progress = progress
        self._stored = stored
        self._interval = interval
        self._active_within = active_within
        self._pending = bytearray()
        self._offset = 0  # where the first pending byte is in the log
        self._sent_progress: tuple[float, str | None] = (-1.0, None)
        self._last = float("-inf")
        self._call: IDelayedCall | None = None
        self._flushing: Deferred[None] | None = None
        self._busy = False
        self._eof = False
        self._closed = False
        self._lost = False
        self.batches = 0

    def write(self, offset: int, data: bytes) -> None:
        """
        Stored log bytes, from C{offset} (consecutive calls are contiguous).
        """
        if self._lost or self._eof:
            return
        assert offset == self._offset + len(self._pending), "log bytes out of order"
        self._pending += data
        self.soon()

    def soon(self) -> None:
        """
        Send a batch once the interval since the last one has passed (the
        progress may have changed).
        """
        if self._lost or self._closed or self._call is not None or self._busy:
            return
        wait = max(0.0, self._last + self._interval - self._reactor.seconds())
        self._call = self._reactor.callLater(wait, self._due)

    def _due(self) -> None:
        self._call = None
        self._busy = True
        flushing = Deferred.fromCoroutine(self._flush())
        self._flushing = None if flushing.called else flushing

    async def _flush(self) -> None:
        sent = False
        try:
            sent = await self._send()
        finally:
            self._busy = False
            self._flushing = None
            if sent:
                self._last = self._reactor.seconds()
        if self._pending and not self._closed:
            self.soon()

    async def _send(self) -> bool:
        """
        One batch of everything pending; whether one was put.
        """
        progress = self._progress()
        if not self._pending and progress == self._sent_progress and not self._eof:
            return False
        data = bytes(self._pending)
        offset, claim = self._offset, self._claim
        eof = self._eof
        now = self._reactor.seconds()
        pieces = [data[i : i + MAX_LOG_BYTES] for i in range(0, len(data), MAX_LOG_BYTES)] or [b""]
        value, status = progress
        changed = progress != self._sent_progress

        def put(conn: Any) -> bool:
            if self._leases.holds(conn, claim, now, renew=False) is not None:
                return False
            for edge in active_edges(conn, now - self._active_within):
                at = offset
                for number, piece in enumerate(pieces):
                    last = number == len(pieces) - 1
                    self._put(conn, edge, at, piece, {
                        "eof": eof and last,
                        "progress": value if changed and last and value >= 0 else None,
                        "status": status if changed and last and value >= 0 else None,
                    })
                    at += len(piece)
            return True

        try:
            held = await self._db.run(put)
        except Exception:
            self.log.failure("could not put the live log of job {job_id}; trying again", job_id=claim.job_id)
            return True
        if not held:
            self._lost = True
            self._pending.clear()
            return False
        del self._pending[: len(data)]
        self._offset += len(data)
        self._sent_progress = progress
        self.batches += 1
        self._outbox.wake()
        return True

    def _put(self, conn: Any, edge: str, offset: int, piece: bytes, more: dict[str, Any]) -> None:
        claim = self._claim
        self._outbox.put(
            conn, JOB_LOG,
            {"job_id": claim.job_id, "project_id": claim.project_id, "attempt": claim.attempt,
             "offset": offset, "size": len(piece), **more},
            to=to_edge(edge), payload=piece or None,
        )

    async def serve(self) -> int:
        """
        Send again the ranges edges asked for (only bytes sent before:
        the rest goes with the next batch anyway); returns how many
        requests were served.
        """
        if self._stored is None or self._lost:
            return 0
        claim, now, sent = self._claim, self._reactor.seconds(), self._offset

        def take(conn: Any) -> list[tuple[str, int, int]]:
            rows = conn.execute(
                "SELECT edge, after, upto FROM job_log_requests WHERE job_id = ? AND attempt = ? ORDER BY edge",
                (claim.job_id, claim.attempt),
            ).fetchall()
            if rows:
                conn.execute("DELETE FROM job_log_requests WHERE job_id = ? AND attempt = ?",
                             (claim.job_id, claim.attempt))
            ranges = [(row[0], int(row[1]), min(int(row[2]), sent)) for row in rows]
            return [(edge, max(after, upto - MAX_RANGE_BYTES), upto) for edge, after, upto in ranges]

        requests = [r for r in await self._db.run(take) if r[1] < r[2]]
        if not requests:
            return 0
        ranges = [(edge, after, self._stored(after, upto)) for edge, after, upto in requests]

        def put(conn: Any) -> bool:
            if self._leases.holds(conn, claim, now, renew=False) is not None:
                return False
            for edge, after, data in ranges:
                for at in range(0, len(data), MAX_LOG_BYTES):
                    self._put(conn, edge, after + at, data[at : at + MAX_LOG_BYTES],
                              {"eof": False, "progress": None, "status": None})
            return True

        if await self._db.run(put):
            self._outbox.wake()
            self.log.info("job {job_id}: sent {count} log ranges again", job_id=claim.job_id, count=len(ranges))
        return len(ranges)

    def close_soon(self) -> Deferred[None]:
        """
        L{close}, as a Deferred.
        """
        return Deferred.fromCoroutine(self.close())

    async def close(self) -> None:
        """
        The run's log is complete: send the rest, the last batch with
        C{eof}.  (A lost lease sends nothing.)
        """
        self._eof = self._closed = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self._flushing is not None:
            await self._flushing
        if not self._lost:
            await self._send()
