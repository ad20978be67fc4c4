"""
Running jobs as the edge's people watch them: the cloud's C{job.log}
batches kept in the log tails (L{relay.edge.jobs.tail}) and told to the
project's members on C{/api/events}.

  - C{job.log}: C{{job_id, project_id, attempt, offset, end, text, eof}},
    the log bytes C{offset} to C{end} newly held, as UTF-8 text (a
    character split between two batches is told whole, in the second
    event; bytes that are not UTF-8 are replaced; the log endpoint serves
    the bytes).  For one job and attempt, consecutive
    events continue each other (C{offset} is the previous C{end}) unless
    the tail restarted past a gap: a client that sees C{offset} beyond
    what it has fetches the range held from C{GET /api/v1/jobs/<id>/log}.
  - C{job.progress}: C{{job_id, project_id, attempt, progress, status}}.

A batch past a gap waits in the tail, and the receiver asks the cloud for
the missing bytes (C{job.log.range}, again every L{ASK_EVERY} seconds while
the gap stays open).  The batches are placed on the database thread
inside the inbox's transaction; what they added is published on the reactor thread.  The
publisher remembers how far it told each job, so a message the inbox
applies a second time (a group undone and applied one by one) tells no
byte twice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from relay.db import Database
from relay.edge.events import EventHub
from relay.edge.jobs.tail import Appended, LogTails
from relay.job_messages import JOB_LOG, JOB_LOG_RANGE
from relay.link.envelope import TO_CLOUD, Envelope
from relay.link.outbox import IOutbox

JOB_LOG_EVENT = "job.log"
JOB_PROGRESS_EVENT = "job.progress"

#: Seconds between two requests for the same gap.
ASK_EVERY = 5.0

#: Jobs whose last told offset is remembered (the oldest are forgotten).
REMEMBERED = 10_000

#: A tail of a job the replica does not know is dropped after this long
#: (the job was deleted, or never reached the replica).
ORPHAN_AFTER = 86400.0

_Told = list[tuple[list[str], Appended]]
_Progress = tuple[list[str], dict[str, Any]] | None


class JobLogReceiver:
    """
    The inbox's handler of C{job.log}, and the publisher of what it kept.

    @param call_from_thread: the reactor's C{callFromThread}.
    """

    log = Logger()

    def __init__(
        self, tails: LogTails, hub: EventHub, call_from_thread: Callable[..., object], *,
        edge_id: str | None = None, outbox: IOutbox | None = None, ask_every: float = ASK_EVERY,
    ) -> None:
        self._tails = tails
        self._hub = hub
        self._call = call_from_thread
        self._edge_id = edge_id
        self._outbox = outbox
        self._ask_every = ask_every
        # Per job: attempt, end told, eof told, bytes held back (a partial
        # UTF-8 character).
        self._told: OrderedDict[str, tuple[int, int, bool, bytes]] = OrderedDict()

    def register(self, inbox: Any) -> None:
        inbox.register(JOB_LOG, self.on_log)

    # -- the database thread -----------------------------------------------------

    def on_log(self, conn: Any, message: Envelope) -> None:
        body = message.body
        data = message.payload or b""
        if len(data) != body["size"]:
            raise ValueError(f"job.log carries {len(data)} bytes, says {body['size']}")
        appended = self._tails.receive(
            conn, body["job_id"], body["project_id"], body["attempt"], body["offset"], data, body["eof"]
        )
        self._ask(conn, body["job_id"])
        members = _members(conn, body["project_id"])
        progress: _Progress = None
        if body.get("progress") is not None:
            progress = (members, {
                "job_id": body["job_id"], "project_id": body["project_id"], "attempt": body["attempt"],
                "progress": body["progress"], "status": body.get("status"),
            })
        if (appended or progress) and members:
            self._call(self._publish, [(members, a) for a in appended], progress)

    def _ask(self, conn: Any, job_id: str) -> bool:
        """
        Ask the cloud for the job's missing bytes, if a gap is open and it
        was not asked for lately (in the caller's transaction).
        """
        if self._outbox is None or self._edge_id is None:
            return False
        gap = self._tails.gap(conn, job_id)
        if gap is None or not self._tails.asking(conn, job_id, self._ask_every):
            return False
        attempt, after, upto = gap
        self._outbox.put(
            conn, JOB_LOG_RANGE,
            {"edge": self._edge_id, "job_id": job_id, "attempt": attempt, "after": after, "upto": upto},
            to=TO_CLOUD,
        )
        self.log.info("job {job_id}: log bytes {after}..{upto} missing, asked for", job_id=job_id, after=after,
                      upto=upto)
        return True

    def housekeeping(self, conn: Any, now: float) -> bool:
        """
        Ask again for gaps still open, restart tails whose gap stayed open
        too long, drop orphaned tails.  Returns whether a message was put.
        """
        asked = any([self._ask(conn, job_id) for job_id in self._tails.open_gaps(conn)])
        told = [(_members(conn, a.project_id), a) for a in self._tails.tick(conn)]
        for (job_id,) in conn.execute(
            "SELECT job_id FROM job_log_tails WHERE updated_at < ? AND job_id NOT IN (SELECT id FROM replica_jobs)",
            (now - ORPHAN_AFTER,),
        ).fetchall():
            self._tails.forget(conn, job_id)
        if told:
            self._call(self._publish, told, None)
        return asked

    # -- the reactor thread --------------------------------------------------------

    def _publish(self, told: _Told, progress: _Progress) -> None:
        for members, appended in told:
            event = self._news(appended)
            if event is not None:
                for user_id in members:
                    self._hub.publish(user_id, JOB_LOG_EVENT, event)
        if progress is not None:
            for user_id in progress[0]:
                self._hub.publish(user_id, JOB_PROGRESS_EVENT, progress[1])

    def _news(self, appended: Appended) -> dict[str, Any] | None:
        """
        The part of C{appended} not told yet, as an event's data.  An
        incomplete UTF-8 character at its end waits for the next bytes, so
        that each event's text is what its bytes say.
        """
        attempt, end, eof, carry = self._told.get(appended.job_id, (0, 0, False, b""))
        if appended.attempt < attempt:
            return None
        if appended.attempt > attempt:
            attempt, end, eof, carry = appended.attempt, 0, False, b""
        reached = end + len(carry)
        if appended.end <= reached and (eof or not appended.eof):
            return None
        if appended.offset > reached:
            # The tail restarted past a gap: what waited before it is gone.
            end, whole = appended.offset, appended.data
        else:
            whole = carry + appended.data[reached - appended.offset :]
        cut = len(whole) if appended.eof else _complete(whole)
        data, carry = whole[:cut], whole[cut:]
        self._told[appended.job_id] = (attempt, end + len(data), eof or appended.eof, carry)
        self._told.move_to_end(appended.job_id)
        while len(self._told) > REMEMBERED:
            self._told.popitem(last=False)
        if not data and (eof or not appended.eof):
            return None
        return {
            "job_id": appended.job_id, "project_id": appended.project_id, "attempt": attempt,
            "offset": end, "end": end + len(data), "text": data.decode("utf-8", "replace"),
            "eof": appended.eof,
        }


def _complete(data: bytes) -> int:
    """
    How much of C{data} ends on a UTF-8 character boundary (an incomplete
    multi-byte character at its end is left out).
    """
    for back in range(1, min(4, len(data) + 1)):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: look further back for its lead
        if byte >= 0xC0:
            needed = 4 if byte >= 0xF0 else 3 if byte >= 0xE0 else 2
            return len(data) - back if back < needed else len(data)
        return len(data)
    return len(data)


def _members(conn: Any, project_id: str) -> list[str]:
    return sorted(
        row[0] for row in conn.execute("SELECT user_id FROM replica_members WHERE project_id = ?", (project_id,))
    )


class JobLogHousekeeping(TimerService):
    """
    Runs L{JobLogReceiver.housekeeping} every C{interval} seconds; errors
    are logged and the timer carries on.
    """

    log = Logger()

    def __init__(
        self, db: Database, receiver: JobLogReceiver, clock: Any, interval: float, wake: Callable[[], object]
    ) -> None:
        super().__init__(interval, lambda: Deferred.fromCoroutine(self._tick()))
        self.clock = clock
        self._clock = clock
        self._db = db
        self._receiver = receiver
        self._wake = wake

    async def _tick(self) -> None:
        try:
            if await self._db.run(self._receiver.housekeeping, self._clock.seconds()):
                self._wake()
        except Exception:
            self.log.failure("job log housekeeping failed; trying again next round")
