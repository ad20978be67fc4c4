"""
The edge's transfer stage as a service: it takes staged uploads from the
tus receiver (it is the receiver's L{IUploadSink}), moves each to S3 with a
L{TransferRun}, and erases the spool file once C{file.registered} arrives,
never before.

Its inbox handlers turn the cloud's answers into journal changes in the
inbox's own transaction (so an answer is applied exactly once, also across
a crash) and wake the run concerned; URLs and C{transfer.parts} pages go
straight to the run's memory.  After a restart every unfinished transfer is
resumed from the journal: a transfer that was sending first asks the cloud
which parts S3 holds.

Progress (bytes S3 has confirmed) is recorded on the upload's record (the
uploads API shows it), kept per upload (L{TransferService.progress}) and
announced to L{TransferService.listeners} (for the live event stream).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from relay.db import Database
from relay.edge.transfer import journal
from relay.edge.transfer.body import PartBody, Throttle
from relay.edge.transfer.journal import Job, JobState
from relay.edge.transfer.planner import MIN_PART_SIZE, Part
from relay.edge.transfer.run import TransferRun
from relay.edge.transfer.uploader import HTTPPartTarget, IPartTarget, PartUploader, RetryPolicy
from relay.edge.uploads.handoff import IUploadSink, StagedUpload
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import UploadState, UploadStore
from relay.link.envelope import TO_CLOUD, Envelope
from relay.metrics import Metrics
from relay.replication import IOutbox
from relay.transfer_messages import (
    ABORT,
    ABORTED,
    FAILED,
    PARTS,
    REGISTERED,
    STARTED,
    URLS,
    register_types,
)


@dataclass(frozen=True)
class TransferSettings:
    """
    The transfer stage's knobs (the C{[transfer]} table of C{edge.toml}).

    @ivar concurrency: part PUTs in flight at once, over all uploads.
    @ivar bandwidth_limit: bytes per second for all part PUTs together;
        C{None} for no cap.
    """

    concurrency: int = 16
    bandwidth_limit: float | None = None
    stall_timeout: float = 45.0
    part_timeout: float = 1800.0
    retry_initial: float = 1.0
    retry_cap: float = 30.0
    request_timeout: float = 120.0
    presign_batch: int = 100
    min_part_size: int = MIN_PART_SIZE
    max_restarts: int = 5
    read_threads: int = 4
    #: At the tail of a transfer, PUT the slowest parts again on slots that
    #: would otherwise idle, up to this many copies at once (1: never).
    tail_copies: int = 3


@dataclass(frozen=True)
class TransferProgress:
    """What a listener hears: bytes S3 has confirmed of an upload, and its state."""

    upload_id: str
    confirmed: int
    size: int
    state: str


@implementer(IUploadSink)
class TransferService(Service):
    """
    See the module docstring.  L{bind} hands it the uploads component's
    spool and store before it starts.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        db: Database,
        outbox: IOutbox,
        settings: TransferSettings = TransferSettings(),
        *,
        target: IPartTarget | None = None,
        metrics: Metrics | None = None,
        blocking: Callable[..., Deferred[Any]] | None = None,
    ) -> None:
        self.reactor = self.clock = reactor
        # From the database thread back to the reactor, after the
        # transaction (a Clock in unit tests has no threads: next turn).
        self._notify: Callable[..., Any] = getattr(
            reactor, "callFromThread", lambda f, *a: reactor.callLater(0, f, *a)
        )
        self.db = db
        self.outbox = outbox
        self.settings = settings
        self.threads = ThreadPool(minthreads=0, maxthreads=settings.read_threads, name="transfer-spool")
        #: Runs spool I/O and hashing off the reactor (tests: inline).
        self.blocking: Callable[..., Deferred[Any]] = blocking or (
            lambda f, *args: deferToThreadPool(reactor, self.threads, f, *args)
        )
        self._target = target if target is not None else HTTPPartTarget(reactor, settings.concurrency)
        policy = RetryPolicy(initial=settings.retry_initial, cap=settings.retry_cap,
                             stall_timeout=settings.stall_timeout, part_timeout=settings.part_timeout)  # fmt: skip
        self.uploader = PartUploader(reactor, self._target, DeferredSemaphore(settings.concurrency), policy)
        self.throttle = Throttle(reactor, settings.bandwidth_limit)
        self.spool: Spool | None = None
        self.store: UploadStore | None = None
        self.listeners: list[Callable[[TransferProgress], None]] = []
        self._runs: dict[str, TransferRun] = {}
        self._running: dict[str, Deferred[None]] = {}
        self._progress: dict[str, TransferProgress] = {}
        self.restarts = 0
        self.presign_requests = 0
        self.hedges = 0
        if metrics is not None:
            self._metrics(metrics)

    def bind(self, spool: Spool, store: UploadStore) -> None:
        """The spool the uploads are in, and their records."""
        self.spool = spool
        self.store = store

    def register(self, inbox: Any) -> None:
        """Apply the cloud's answers from C{inbox}."""
        inbox.register(STARTED, self._on_started)
        inbox.register(URLS, self._on_urls)
        inbox.register(PARTS, self._on_parts)
        inbox.register(FAILED, self._on_failed)
        inbox.register(REGISTERED, self._on_registered)
        inbox.register(ABORTED, lambda conn, message: None)

    def _metrics(self, metrics: Metrics) -> None:
        stats = self.uploader.stats
        metrics.gauge("transfer_active", "Uploads being transferred.", lambda: len(self._runs))
        metrics.gauge("transfer_parts_in_flight", "Part PUTs in flight.", lambda: self.uploader.in_flight)
        metrics.gauge("transfer_part_attempts", "Part PUT attempts since start.", lambda: stats.attempts)
        metrics.gauge("transfer_part_retries", "Part PUTs retried since start.", lambda: stats.retries)
        metrics.gauge("transfer_part_stalls", "Part PUTs abandoned for lack of progress.", lambda: stats.stalls)
        metrics.gauge("transfer_urls_refreshed", "Presigned URLs replaced after a refusal.",
                      lambda: stats.refreshed_urls)  # fmt: skip
        metrics.gauge("transfer_bytes_sent", "Part bytes written to S3 connections.", lambda: stats.bytes_sent)
        metrics.gauge("transfer_restarts", "Transfers started over.", lambda: self.restarts)
        metrics.gauge("transfer_part_copies", "Extra PUTs of tail parts (first answer wins).",
                      lambda: self.hedges)  # fmt: skip
        metrics.gauge("transfer_presign_requests", "transfer.presign requests sent.",
                      lambda: self.presign_requests)  # fmt: skip

    # -- IUploadSink ---------------------------------------------------------------

    def upload_staged(self, upload: StagedUpload) -> Deferred[None]:
        return Deferred.fromCoroutine(self._staged(upload))

    async def _staged(self, upload: StagedUpload) -> None:
        assert self.store is not None
        now = self.clock.seconds()
        await self.db.run(journal.add_job, upload, secrets.token_hex(16), now)
        await self.store.set_state(upload.upload_id, UploadState.TRANSFERRING, now, transferred=0)
        self.log.info("upload {upload_id} queued for transfer ({length} bytes)",
                      upload_id=upload.upload_id, length=upload.length)  # fmt: skip
        if self.running:
            self._start(upload.upload_id, resumed=False)

    # -- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.threads.start()
        Deferred.fromCoroutine(self._resume()).addErrback(
            lambda f: self.log.failure("could not resume transfers", f)
        )

    async def _resume(self) -> None:
        for job in await self.db.read(journal.unfinished):
            self.log.info("resuming the transfer of upload {upload_id} ({state})",
                          upload_id=job.upload_id, state=job.state.value)  # fmt: skip
            self._start(job.upload_id, resumed=job.state is JobState.SENDING)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for run in list(self._runs.values()):
            run.stop()

        async def stopped() -> None:
            await DeferredList(list(self._running.values()), consumeErrors=True)
            close = getattr(self._target, "close", None)
            if close is not None:
                await close()
            self.threads.stop()

        return Deferred.fromCoroutine(stopped())

    def _start(self, upload_id: str, *, resumed: bool) -> None:
        existing = self._runs.get(upload_id)
        if existing is not None:
            existing.wake()
            return
        run = TransferRun(self, upload_id, resumed=resumed)
        self._runs[upload_id] = run
        d = Deferred.fromCoroutine(run.run())
        self._running[upload_id] = d
        d.addErrback(self._run_failed, upload_id)
        d.addBoth(self._run_over, upload_id, run)

    def _run_failed(self, failure: Failure, upload_id: str) -> None:
        self.log.failure("the transfer of upload {upload_id} failed; trying again in 30 s", failure,
                         upload_id=upload_id)  # fmt: skip
        self.clock.callLater(30.0, self._restart_run, upload_id)

    def _restart_run(self, upload_id: str) -> None:
        if self.running:
            self._start(upload_id, resumed=True)

    def _run_over(self, _: Any, upload_id: str, run: TransferRun) -> None:
        if self._runs.get(upload_id) is run:
            del self._runs[upload_id]
            self._running.pop(upload_id, None)

    def _run_for(self, transfer_id: str) -> TransferRun | None:
        for run in self._runs.values():
            if run._transfer_id == transfer_id:
                return run
        return None

    def _wake(self, upload_id: str, interrupt: bool = False) -> None:
        run = self._runs.get(upload_id)
        if run is not None:
            run.wake(interrupt)
        elif self.running:
            self._start(upload_id, resumed=False)

    def notify_outbox(self) -> None:
        """A message was put in a transaction on the database thread."""
        self._notify(self.outbox.wake)

    # -- what runs need ------------------------------------------------------------

    def open_body(self, spool_id: str, part: Part) -> PartBody:
        """One attempt's body: part C{part} of spool file C{spool_id}, read on a thread."""
        assert self.spool is not None
        spool = self.spool
        opened: dict[str, Any] = {}

        def next_block() -> bytes:
            if "blocks" not in opened:
                opened["reader"] = spool.reader(spool_id)
                opened["blocks"] = opened["reader"].blocks(part.offset, part.size)
            return next(opened["blocks"], b"")

        def close() -> None:
            if "reader" in opened:
                opened["reader"].close()

        return PartBody(self.clock, part.size,
                        lambda: self.blocking(next_block),
                        close, self.throttle)  # fmt: skip

    def progressed(self, job: Job, confirmed: int, state: str = "transferring") -> None:
        progress = TransferProgress(job.upload_id, confirmed, job.size, state)
        self._progress[job.upload_id] = progress
        if self.store is not None and state == "transferring":
            self.store.record_transferred(job.upload_id, confirmed, self.clock.seconds()).addErrback(
                lambda f: self.log.failure("recording progress of {upload_id}", f, upload_id=job.upload_id)
            )
        for listener in list(self.listeners):
            try:
                listener(progress)
            except Exception:
                self.log.failure("a progress listener failed")

    def progress(self, upload_id: str) -> TransferProgress | None:
        """Bytes S3 has confirmed of an upload in transfer (since this start)."""
        return self._progress.get(upload_id)

    async def start_over(self, job: Job, reason: str) -> None:
        """S3 lost the multipart upload: a new transfer, from scratch."""
        await self.db.run(self._restart, job.upload_id, job.transfer_id, reason)
        self._wake(job.upload_id)

    def _restart(self, conn: Any, upload_id: str, transfer_id: str, reason: str) -> None:
        current = journal.job(conn, upload_id)
        if current is None or current.transfer_id != transfer_id:
            return
        now = self.clock.seconds()
        if current.restarts >= self.settings.max_restarts:
            journal.set_state(conn, upload_id, JobState.FAILED, now,
                              error=f"started over {current.restarts} times; last: {reason}")  # fmt: skip
            return
        new = secrets.token_hex(16)
        journal.restart(conn, upload_id, transfer_id, new, now, reason)
        # The old upload, if S3 still has it, is of no use any more.
        self.outbox.put(conn, ABORT, {"transfer_id": transfer_id}, to=TO_CLOUD)
        self.notify_outbox()
        self.restarts += 1
        self.log.warn("upload {upload_id}: transfer {old} starts over as {new}: {reason}",
                      upload_id=upload_id, old=transfer_id, new=new, reason=reason)  # fmt: skip

    async def fail(self, job: Job, reason: str) -> None:
        """The transfer cannot go on (the run then reports it: L{failed})."""
        await self.db.run(lambda conn: journal.set_state(
            conn, job.upload_id, JobState.FAILED, self.clock.seconds(), transfer_id=job.transfer_id,
            error=reason,
        ))  # fmt: skip

    async def erase(self, job: Job) -> None:
        """
        The cloud registered the file: crypto-erase the spool file, then
        the upload is C{in_cloud}.
        """
        assert self.spool is not None and self.store is not None
        spool = self.spool
        await self.blocking(spool.erase, job.spool_id)
        now = self.clock.seconds()
        await self.store.set_state(job.upload_id, UploadState.IN_CLOUD, now, transferred=job.size)
        await self.db.run(journal.set_state, job.upload_id, JobState.DONE, now)
        self.log.info("upload {upload_id} is in the cloud; spool file erased", upload_id=job.upload_id)
        self.progressed(job, job.size, "in_cloud")

    async def failed(self, job: Job) -> None:
        """The transfer failed for good: the upload says why; the spool file stays."""
        assert self.store is not None
        upload = await self.store.get(job.upload_id)
        if upload is not None and upload.state is not UploadState.FAILED:
            await self.store.set_state(job.upload_id, UploadState.FAILED, self.clock.seconds(), error=job.error)
            self.log.error("the transfer of upload {upload_id} failed: {error}",
                           upload_id=job.upload_id, error=job.error)  # fmt: skip
        self.progressed(job, job.confirmed_bytes, "failed")

    # -- the cloud's answers (database thread, in the inbox's transaction) -----------

    def _on_started(self, conn: Any, message: Envelope) -> None:
        job = journal.job_by_transfer(conn, message.body["transfer_id"])
        if job is not None and job.state is JobState.BEGINNING:
            journal.set_state(conn, job.upload_id, JobState.SENDING, self.clock.seconds())
            self._notify(self._wake, job.upload_id)

    def _on_urls(self, conn: Any, message: Envelope) -> None:
        body = message.body
        urls = {u["number"]: u["url"] for u in body["urls"]}
        self._notify(self._urls_arrived, body["transfer_id"], urls, body["expires_in"])

    def _urls_arrived(self, transfer_id: str, urls: dict[int, str], expires_in: int) -> None:
        run = self._run_for(transfer_id)
        if run is not None:
            run.urls(transfer_id, urls, expires_in)

    def _on_parts(self, conn: Any, message: Envelope) -> None:
        body = message.body
        self._notify(self._page_arrived, body["transfer_id"], body["request_id"], body["page"],
                     body["last"], body["parts"])  # fmt: skip

    def _page_arrived(self, transfer_id: str, request_id: str, page: int, last: bool, parts: list[Any]) -> None:
        run = self._run_for(transfer_id)
        if run is not None:
            run.page(transfer_id, request_id, page, last, parts)

    def _on_failed(self, conn: Any, message: Envelope) -> None:
        body = message.body
        job = journal.job_by_transfer(conn, body["transfer_id"])
        if job is None or job.state in (JobState.REGISTERED, JobState.DONE, JobState.FAILED):
            return
        now = self.clock.seconds()
        code, reason = body["code"], body["reason"]
        if code == "incomplete":
            journal.unconfirm(conn, job.upload_id, job.transfer_id, body.get("missing", []), now)
            journal.set_state(conn, job.upload_id, JobState.SENDING, now)
        elif code == "refused":
            journal.set_state(conn, job.upload_id, JobState.FAILED, now, error=f"refused: {reason}")
        else:
            self._restart(conn, job.upload_id, job.transfer_id, f"{code}: {reason}")
        self._notify(self._wake, job.upload_id, True)

    def _on_registered(self, conn: Any, message: Envelope) -> None:
        job = journal.job_by_transfer(conn, message.body["transfer_id"])
        if job is not None and job.state in (JobState.BEGINNING, JobState.SENDING, JobState.FINISHING):
            journal.set_state(conn, job.upload_id, JobState.REGISTERED, self.clock.seconds())
            self._notify(self._wake, job.upload_id, True)



def build_transfers(
    section: Any, reactor: Any, db: Database, bridge: Any, metrics: Metrics
) -> TransferService:
    """
    The edge's transfer stage from the C{[transfer]} table, with its message
    types in the bridge's catalogue and its handlers on the bridge's inbox.
    L{TransferService.bind} it to the uploads' spool and store next.
    """
    register_types(bridge.catalogue)
    settings = TransferSettings(
        concurrency=section.concurrency,
        bandwidth_limit=float(section.bandwidth_limit) or None,
        stall_timeout=section.stall_timeout,
        part_timeout=section.part_timeout,
        retry_initial=section.retry_initial,
        retry_cap=section.retry_cap,
        request_timeout=section.request_timeout,
        tail_copies=section.tail_copies,
    )
    service = TransferService(reactor, db, bridge.outbox, settings, metrics=metrics)
    service.register(bridge.inbox)
    return service
