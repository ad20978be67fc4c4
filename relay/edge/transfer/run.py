"""
One upload's transfer, driven through the journal's states (see
L{relay.edge.transfer.journal}) by L{TransferRun.run}.

Every step that talks to the cloud commits the message with the state
change in one transaction (the outbox sends it when the link allows); the
answers come back through the service's inbox handlers, which move the
journal on and wake the run.  A request whose answer does not come within
C{request_timeout} is sent again: the cloud answers repeated requests the
same way.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from relay.edge.transfer import journal
from relay.edge.transfer.body import StagedCopyDamaged
from relay.edge.transfer.context import RunContext
from relay.edge.transfer.journal import Job, JobState, JournalPart
from relay.edge.transfer.planner import Part, measure, plan_parts
from relay.edge.transfer.streams import (
    ReceiverAccess,
    StreamCount,
    StreamSender,
    TransferGone,
    ranges,
)
from relay.edge.transfer.uploader import PartFailed, UploadGone
from relay.edge.transfer.urls import UrlBook
from relay.edge.uploads.spool import SpoolCorrupt, SpoolError
from relay.link.envelope import TO_CLOUD
from relay.transfer_messages import AUTHORIZE, BEGIN, FINISH, PRESIGN, STATUS

#: Why a transfer whose spool copy cannot be read back failed, for its owner.
DAMAGED = "the staged copy is damaged; upload the file again"


class Interrupted(Exception):
    """The journal moved under the run (an answer from the cloud): look again."""


class TransferRun:
    """
    Drives one upload's transfer until it is registered and erased, or
    failed.  Created by the L{TransferService}, which hands it the cloud's
    answers (L{wake}, L{urls}, L{page}) and stops it (L{stop}).
    """

    log = Logger()

    def __init__(self, service: RunContext, upload_id: str, *, resumed: bool) -> None:
        self._service = service
        self._clock = service.clock
        self.upload_id = upload_id
        # After a restart S3 may hold parts the journal does not know of.
        self._needs_status = resumed
        self._woken = False
        self._waiter: Deferred[None] | None = None
        self._stopped = False
        self._sending: list[Deferred[None]] = []
        self._transfer_id = ""
        self._book: UrlBook | None = None
        self._md5s: dict[int, str] = {}
        self._pending: list[int] = []
        self._status_request = ""
        self._pages: dict[int, list[dict[str, Any]]] = {}
        self._last_page = 0
        # The tus path: the receiver's token, and the streams at work.
        self._tus = service.settings.mode == "tus"
        self._access: ReceiverAccess | None = None
        self._streams: StreamSender | None = None
        self._resumed = resumed

    @property
    def transfer_id(self) -> str:
        """The transfer this run is driving now ("" before it begins one)."""
        return self._transfer_id

    # -- from the service --------------------------------------------------------

    def wake(self, interrupt: bool = False) -> None:
        """
        The journal may have changed; with C{interrupt}, stop sending parts
        (the transfer starts over, or the cloud wants other parts).
        """
        self._woken = True
        if interrupt:
            # Before the waiter fires: the run resumes inside its callback
            # and may start new parts, which must not be cancelled.
            for d in list(self._sending):
                d.cancel()
            if self._streams is not None:
                self._streams.stop()
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def urls(self, transfer_id: str, urls: dict[int, str], expires_in: int) -> None:
        if transfer_id == self._transfer_id and self._book is not None:
            self._book.add(urls, expires_in)

    def page(self, transfer_id: str, request_id: str, page: int, last: bool, parts: list[dict[str, Any]]) -> None:
        if transfer_id != self._transfer_id or request_id != self._status_request:
            return
        self._pages[page] = parts
        if last:
            self._last_page = page
        if self._last_page and len(self._pages) >= self._last_page:
            self.wake()

    def authorized(self, transfer_id: str, token: str, url: str, expires_in: int) -> None:
        """The cloud's answer to C{transfer.authorize}."""
        if transfer_id == self._transfer_id and self._access is not None:
            self._access.authorized(token, url, expires_in)

    def send_directly(self) -> None:
        """The cloud runs no receiver: this run sends presigned part PUTs."""
        if self._tus:
            self.log.warn("upload {upload_id}: the cloud runs no tus receiver; sending parts directly to S3",
                          upload_id=self.upload_id)
        self._tus = False
        self.wake(interrupt=True)

    def stop(self) -> None:
        self._stopped = True
        self.wake(interrupt=True)
        if self._book is not None:
            self._book.close()
        if self._access is not None:
            self._access.close()

    # -- the run -----------------------------------------------------------------

    async def run(self) -> None:
        service = self._service
        while not self._stopped:
            # Before reading: a wake from now on is not lost.
            self._woken = False
            job = await service.db.read(journal.job, self.upload_id)
            if job is None or job.state in (JobState.DONE, JobState.FAILED):
                if job is not None and job.state is JobState.FAILED:
                    await service.failed(job)
                return
            if job.transfer_id != self._transfer_id:
                self._new_transfer(job)
            if job.state is JobState.PLANNED:
                await self._measure(job)
            elif job.state is JobState.READY:
                await self._begin(job)
            elif job.state is JobState.BEGINNING:
                if not await self._wait(service.settings.request_timeout):
                    await service.db.run(self._put, job, BEGIN, self._begin_body(job))
            elif job.state is JobState.SENDING:
                await self._send(job)
            elif job.state is JobState.FINISHING:
                if not await self._wait(service.settings.request_timeout):
                    await service.db.run(self._put, job, FINISH, {"transfer_id": job.transfer_id})
            elif job.state is JobState.REGISTERED:
                await service.erase(job)

    def _new_transfer(self, job: Job) -> None:
        if self._book is not None:
            self._book.close()
        self._transfer_id = job.transfer_id
        self._book = UrlBook(self._clock, lambda numbers: self._ask(job, numbers), self._upcoming,
                             batch=self._service.settings.presign_batch)
        self._pages, self._last_page, self._status_request = {}, 0, ""
        if self._access is not None:
            self._access.close()
        settings = self._service.settings

        async def ask() -> None:
            try:
                await self._service.db.run(self._put, job, AUTHORIZE, {"transfer_id": job.transfer_id})
            except Interrupted:
                pass

        self._access = ReceiverAccess(self._clock, ask, settings.receiver_url, settings.request_timeout)

    async def _wait(self, timeout: float) -> bool:
        """
        Wait to be woken, at most C{timeout} seconds; returns whether woken.
        """
        if self._woken or self._stopped:
            return True
        waiter: Deferred[None] = Deferred()
        self._waiter = waiter
        timer = self._clock.callLater(timeout, waiter.cancel)
        try:
            await self._waiter
            return True
        except CancelledError:
            return False
        finally:
            self._waiter = None
            if timer.active():
                timer.cancel()

    def _put(self, conn: Any, job: Job, type: str, body: dict[str, Any],
             state: JobState | None = None) -> None:
        """In a transaction: a message for the cloud, and maybe the state it leads to."""
        current = journal.job(conn, job.upload_id)
        if current is None or current.transfer_id != job.transfer_id:
            raise Interrupted()
        self._service.outbox.put(conn, type, body, to=TO_CLOUD)
        if state is not None:
            journal.set_state(conn, job.upload_id, state, self._clock.seconds())
        # The message and the state commit together; the pump runs after.
        self._service.notify_outbox()

    # -- planned -> ready: the digests ---------------------------------------------

    async def _measure(self, job: Job) -> None:
        service = self._service
        spool = service.spool

        def work() -> Any:
            with spool.reader(job.spool_id) as reader:
                if reader.length != job.size or not reader.finalized:
                    raise ValueError(f"the spool holds {reader.length} bytes, not {job.size}")
                plan = plan_parts(job.size, reader.segment_size,
                                  min_part_size=service.settings.part_size_floor())
                return plan, measure(plan, reader.blocks)

        started = self._clock.seconds()
        try:
            plan, digests = await service.blocking(work)
        except SpoolCorrupt as e:
            self.log.error("upload {upload_id}: {error}", upload_id=job.upload_id, error=str(e))
            await service.fail(job, DAMAGED)
            return
        except (SpoolError, ValueError) as e:
            # The staged bytes are gone or not what was staged: nothing to send.
            await service.fail(job, f"the spool file cannot be read: {e}")
            return
        await service.db.run(journal.set_plan, job.upload_id, plan, digests, self._clock.seconds())
        self.log.info("upload {upload_id}: {count} parts of {part_size} bytes, sha256 {sha256} "
                      "({seconds:.1f}s)", upload_id=job.upload_id, count=plan.count,
                      part_size=plan.part_size, sha256=digests.sha256,
                      seconds=self._clock.seconds() - started)

    # -- ready -> beginning -> sending ---------------------------------------------

    def _begin_body(self, job: Job) -> dict[str, Any]:
        return {
            "transfer_id": job.transfer_id, "file_id": job.upload_id, "project": job.project,
            "owner": job.owner, "name": job.filename or f"upload-{job.upload_id}",
            "content_type": job.filetype or "application/octet-stream", "size": job.size,
            "sha256": job.sha256, "part_size": job.part_size, "part_count": job.part_count,
        }

    async def _begin(self, job: Job) -> None:
        await self._load_parts(job)
        self._needs_status = False
        await self._service.db.run(self._put, job, BEGIN, self._begin_body(job), JobState.BEGINNING)
        if self._tus:
            # The token travels right behind the begin: one round trip.
            assert self._access is not None
            self._access.asking()
            await self._service.db.run(self._put, job, AUTHORIZE, {"transfer_id": job.transfer_id})
            return
        # The first URLs travel right behind the begin: one round trip, not two.
        assert self._book is not None
        for number in self._pending[:1]:
            self._book.get(number).addErrback(lambda f: None)

    async def _load_parts(self, job: Job) -> list[JournalPart]:
        parts = await self._service.db.read(journal.parts, job.upload_id)
        self._md5s = {p.number: p.md5 for p in parts}
        self._pending = [p.number for p in parts if not p.confirmed]
        return parts

    def _upcoming(self) -> Iterator[int]:
        return iter(self._pending)

    def _ask(self, job: Job, numbers: list[int]) -> None:
        self._service.presign_requests += 1
        body = {"transfer_id": job.transfer_id,
                "parts": [{"number": n, "md5": self._md5s[n]} for n in numbers]}
        self._service.db.run(self._put, job, PRESIGN, body).addErrback(
            lambda f: f.trap(Interrupted) and None
        ).addErrback(lambda f: self.log.failure("asking for URLs failed", f))

    # -- sending -------------------------------------------------------------------

    async def _catch_up(self, job: Job) -> None:
        """
        Ask the cloud which parts S3 holds, and believe it.
        """
        service = self._service
        while not self._stopped:
            self._status_request = secrets.token_hex(16)
            self._pages, self._last_page = {}, 0
            await service.db.run(self._put, job, STATUS,
                                 {"transfer_id": job.transfer_id, "request_id": self._status_request})
            while not (self._last_page and len(self._pages) >= self._last_page):
                if not await self._wait(service.settings.request_timeout):
                    break
                self._woken = False
                current = await service.db.read(journal.job, job.upload_id)
                if current is None or (current.transfer_id, current.state) != (job.transfer_id, job.state):
                    raise Interrupted()
            else:
                held = {p["number"]: (p["size"], p["etag"]) for page in self._pages.values() for p in page}
                confirmed = await service.db.run(journal.reconcile, job.upload_id, job.transfer_id, held,
                                                 self._clock.seconds())
                if confirmed is None:
                    raise Interrupted()
                self.log.info("upload {upload_id}: S3 already holds {confirmed} of {size} bytes",
                              upload_id=job.upload_id, confirmed=confirmed.bytes, size=job.size)
                service.reports.progressed(job, confirmed)
                return

    async def _send(self, job: Job) -> None:
        if self._tus:
            await self._send_streams(job)
            return
        service = self._service
        try:
            if self._needs_status:
                await self._catch_up(job)
                self._needs_status = False
            parts = await self._load_parts(job)
            todo = [p for p in parts if not p.confirmed]
            outcome = await self._send_parts(job, todo)
        except Interrupted:
            return
        if outcome == "gone":
            await service.start_over(job, "S3 no longer has the multipart upload")
        elif outcome == "failed":
            await service.fail(job, "S3 keeps refusing a part", abort=True)
        elif outcome == "damaged":
            await service.fail(job, DAMAGED, abort=True)
        elif outcome == "done":
            try:
                await service.db.run(self._put, job, FINISH, {"transfer_id": job.transfer_id},
                                     JobState.FINISHING)
            except Interrupted:
                return
        else:
            # Interrupted: usually the journal moved (look again at once);
            # after an unexpected error, not in a tight loop.
            await self._wait(1.0)

    async def _send_streams(self, job: Job) -> None:
        """The tus path: partial uploads to the receiver, then the final one."""
        service = self._service
        settings = service.settings
        assert self._access is not None
        parts = await self._load_parts(job)
        every = ranges(parts)
        confirmed = {p.number for p in parts if p.confirmed}
        todo = [r for r in every if not all(n in confirmed for n in range(r.first, r.last + 1))]
        ends = sorted((p.offset + p.size, p) for p in parts)

        async def confirm(first: int, last: int, upto: int) -> None:
            numbers = [p.number for end, p in ends
                       if first <= p.number <= last and end <= upto and p.number in self._pending]
            if not numbers:
                return
            for n in numbers:
                self._pending.remove(n)
            done = await service.db.run(journal.confirm_many, job.upload_id, job.transfer_id, numbers,
                                        self._clock.seconds())
            if done is None:
                raise Interrupted()
            service.reports.progressed(job, done)

        count = StreamCount(settings.min_streams, settings.max_streams, start=service.stream_memory.start)
        sender = StreamSender(
            self._clock, service.tus_target(), self._access, todo, every, count,
            lambda p: service.open_body(job.spool_id, p), confirm, service.stream_stats,
            stall_timeout=settings.stream_stall_timeout, resumed=self._resumed or bool(confirmed),
            upload_id=job.upload_id, slots=service.stream_slots,
        )
        if not self._tus:
            return  # the cloud said it runs no receiver meanwhile
        self._streams = sender
        try:
            await sender.run()
        except TransferGone as e:
            self.log.warn("upload {upload_id}: {error}", upload_id=job.upload_id, error=str(e))
            await service.start_over(job, str(e))
            return
        except StagedCopyDamaged as e:
            self.log.error("upload {upload_id}: {error}", upload_id=job.upload_id, error=str(e))
            await service.fail(job, DAMAGED, abort=True)
            return
        except (CancelledError, Interrupted):
            await self._wait(1.0)
            return
        finally:
            self._streams = None
            self._resumed = True
            service.stream_memory.remember(count)
        # The final upload queued the completion at the cloud; a
        # transfer.finish follows only if file.registered is late.
        now = self._clock.seconds()

        def finishing(conn: Any) -> bool:
            return journal.set_state(conn, job.upload_id, JobState.FINISHING, now, transfer_id=job.transfer_id)

        await service.db.run(finishing)

    async def _send_parts(self, job: Job, todo: list[JournalPart]) -> str:
        """
        Send C{todo}: C{"done"}, C{"gone"}, C{"failed"}, C{"damaged"} or
        C{"interrupted"}.
        """
        assert self._book is not None
        sender = _PartSender(self, job, todo, self._book)
        return await sender.run()

    async def confirm(self, job: Job, part: JournalPart) -> None:
        """S3 holds C{part}: the journal says so, and progress moves."""
        service = self._service
        confirmed = await service.db.run(journal.confirm, job.upload_id, job.transfer_id, part.number,
                                         self._clock.seconds())
        if confirmed is None:
            raise Interrupted()
        if part.number in self._pending:
            self._pending.remove(part.number)
        service.reports.progressed(job, confirmed)


class _PartSender:
    """
    Sends one transfer's parts: a bounded window of parts in progress (the
    uploader's slots decide how many are on the wire), and at the tail,
    when slots would otherwise idle, more PUTs of the parts that have been
    in flight longest (the same bytes to the same URL: whichever finishes
    first counts, the others are cancelled).  On a link that resets
    connections the last parts otherwise dominate the transfer's time.
    (Per-connection caps make the copies nearly free; an aggregate cap
    makes them cost the few parts still going some bandwidth.)
    """

    def __init__(self, run: TransferRun, job: Job, todo: list[JournalPart], book: UrlBook) -> None:
        self._run = run
        self._service = run._service
        self._job = job
        self._book = book
        self._queue = list(todo)
        self._parts = {p.number: p for p in todo}
        self._window = self._service.settings.concurrency * 2
        self._racing: dict[int, list[Deferred[str]]] = {}
        self._since: dict[int, float] = {}
        self._losers: set[Deferred[Any]] = set()
        self._outcome = "done"
        self._done: Deferred[None] = Deferred()

    async def run(self) -> str:
        self._start_next()
        await self._done
        if self._run._stopped or (self._outcome == "done" and self._queue):
            return "interrupted"
        return self._outcome

    def _going(self) -> bool:
        return self._outcome == "done" and not self._run._stopped

    def _track(self, d: Deferred[Any]) -> None:
        self._run._sending.append(d)

    def _launch(self, part: JournalPart) -> None:
        service, job = self._service, self._job
        planned = Part(part.number, part.offset, part.size)
        d = Deferred.fromCoroutine(service.uploader.send(
            planned, part.md5, self._book.get, self._book.invalidate,
            lambda p: service.open_body(job.spool_id, p),
        ))
        self._track(d)
        self._racing.setdefault(part.number, []).append(d)
        self._since.setdefault(part.number, self._run._clock.seconds())
        d.addBoth(self._sent, d, part)

    def _start_next(self) -> None:
        while self._queue and len(self._racing) < self._window and self._going():
            self._launch(self._queue.pop(0))
        if not self._queue and self._going() and self._service.settings.tail_copies > 1:
            self._hedge()
        if not self._run._sending and not self._done.called:
            self._done.callback(None)

    def _hedge(self) -> None:
        """
        At the tail (at most half the slots' worth of parts left), give the
        parts in flight longest more copies on the slots that are free, up
        to C{tail_copies} each, round-robin.
        """
        concurrency = self._service.settings.concurrency
        if len(self._racing) > concurrency // 2:
            return
        free = self._service.uploader.slots.tokens
        oldest_first = [n for _, n in sorted((self._since[n], n) for n in self._racing)]
        for copies in range(1, self._service.settings.tail_copies):
            for number in oldest_first:
                if free <= 0:
                    return
                if len(self._racing.get(number, ())) == copies:
                    self._service.hedges += 1
                    self._launch(self._parts[number])
                    free -= 1

    def _sent(self, result: Any, d: Deferred[Any], part: JournalPart) -> None:
        self._run._sending.remove(d)
        siblings = self._racing.get(part.number, [])
        if d in siblings:
            siblings.remove(d)
        if d in self._losers:
            self._losers.discard(d)
        elif not isinstance(result, Failure):
            # This PUT won: its siblings stop, the part is confirmed.
            for other in siblings:
                self._losers.add(other)
            self._racing.pop(part.number, None)
            for other in list(siblings):
                other.cancel()
            c = Deferred.fromCoroutine(self._run.confirm(self._job, part))
            self._track(c)
            c.addBoth(self._confirmed, c)
        elif not siblings:
            self._racing.pop(part.number, None)
            self._failed(result)
        # (A failed second PUT of a part whose first is still going: no news.)
        self._start_next()

    def _confirmed(self, result: Any, c: Deferred[Any]) -> None:
        self._run._sending.remove(c)
        if isinstance(result, Failure):
            self._failed(result)
        self._start_next()

    def _failed(self, failure: Failure) -> None:
        if self._outcome != "done":
            return  # the first failure decides; the others follow from it
        error = failure.value
        if isinstance(error, UploadGone):
            self._outcome = "gone"
        elif isinstance(error, (PartFailed, StagedCopyDamaged)):
            self._run.log.error("upload {upload_id}: {error}", upload_id=self._job.upload_id, error=str(error))
            self._outcome = "failed" if isinstance(error, PartFailed) else "damaged"
        elif isinstance(error, (CancelledError, Interrupted)):
            self._outcome = "interrupted"
        else:
            self._run.log.failure("upload {upload_id}: sending a part failed", failure,
                                  upload_id=self._job.upload_id)
            self._outcome = "interrupted"
        if self._outcome != "interrupted":
            for other in list(self._run._sending):
                other.cancel()
