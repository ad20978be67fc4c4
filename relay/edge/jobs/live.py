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

The batches are placed on the database thread inside the inbox's
transaction; what they added is published on the reactor thread.  The
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
from relay.job_messages import JOB_LOG
from relay.link.envelope import Envelope

JOB_LOG_EVENT = "job.log"
JOB_PROGRESS_EVENT = "job.progress"

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

    def __init__(self, tails: LogTails, hub: EventHub, call_from_thread: Callable[..., object]) -> None:
        self._tails = tails
        self._hub = hub
        self._call = call_from_thread
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
        members = _members(conn, body["project_id"])
        progress: _Progress = None
        if body.get("progress") is not None:
            progress = (members, {
                "job_id": body["job_id"], "project_id": body["project_id"], "attempt": body["attempt"],
                "progress": body["progress"], "status": body.get("status"),
            })  # fmt: skip
        if (appended or progress) and members:
            self._call(self._publish, [(members, a) for a in appended], progress)

    def housekeeping(self, conn: Any, now: float) -> None:
        """
        Restart tails whose gap stayed open; drop orphaned tails.
        """
        told = [(_members(conn, a.project_id), a) for a in self._tails.tick(conn)]
        for (job_id,) in conn.execute(
            "SELECT job_id FROM job_log_tails WHERE updated_at < ? AND job_id NOT IN (SELECT id FROM replica_jobs)",
            (now - ORPHAN_AFTER,),
        ).fetchall():
            self._tails.forget(conn, job_id)
        if told:
            self._call(self._publish, told, None)

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
        }  # fmt: skip


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

    def __init__(self, db: Database, receiver: JobLogReceiver, clock: Any, interval: float) -> None:
        super().__init__(interval, lambda: Deferred.fromCoroutine(self._tick()))
        self.clock = clock
        self._clock = clock
        self._db = db
        self._receiver = receiver

    async def _tick(self) -> None:
        try:
            await self._db.run(self._receiver.housekeeping, self._clock.seconds())
        except Exception:
            self.log.failure("job log housekeeping failed; trying again next round")
