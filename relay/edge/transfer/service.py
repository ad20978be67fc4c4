"""
The edge's transfer stage as a service: it takes staged uploads from the
tus receiver (it is the receiver's L{IUploadSink}), moves each to S3 with a
L{TransferRun}, and erases the spool file once C{file.registered} arrives,
never before.

Its inbox handlers (L{relay.edge.transfer.answers}) turn the cloud's
answers into journal changes in the inbox's own transaction and wake the
run concerned.  After a restart every unfinished transfer is
resumed from the journal: a transfer that was sending first asks the cloud
which parts S3 holds.

Progress (bytes S3 has confirmed) and each change of the upload's state
are recorded on the upload's record (the uploads API shows them), kept per
upload (L{TransferService.progress}) and told to the upload's owner through
the edge's event hub (L{relay.edge.transfer.progress}).

A transfer that failed for good starts over when its owner asks
(L{TransferService.retry_transfer}): a new transfer id, the digests
computed again from the spool copy, and C{transfer.abort} for the old one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from relay.db import Database
from relay.edge.events import EventHub
from relay.edge.transfer import journal
from relay.edge.transfer.answers import CloudAnswers
from relay.edge.transfer.body import PartBody, Throttle
from relay.edge.transfer.journal import Job, JobState
from relay.edge.transfer.planner import MIN_PART_SIZE, Part
from relay.edge.transfer.progress import TransferProgress, TransferReports
from relay.edge.transfer.run import TransferRun
from relay.edge.transfer.streams import StreamMemory, StreamStats
from relay.edge.transfer.tus_client import HTTPTusTarget, ITusTarget
from relay.edge.transfer.uploader import HTTPPartTarget, IPartTarget, PartUploader, RetryPolicy
from relay.edge.uploads.announcer import UploadAnnouncer
from relay.edge.uploads.handoff import IUploadSink, StagedUpload
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import UploadState, UploadStore
from relay.link.envelope import TO_CLOUD
from relay.metrics import Metrics
from relay.replication import IInbox, IOutbox
from relay.threads import Blocking, Threads
from relay.transfer_messages import ABORT, register_types
from relay.transfer_messages import MIN_PART_SIZE as TUS_MIN_PART_SIZE


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
    #: C{"tus"}: partial uploads to the cloud's receiver; C{"direct"}:
    #: presigned part PUTs to S3.
    mode: str = "direct"
    min_streams: int = 4
    max_streams: int = 64
    #: The first file's stream count (later files start where the one
    #: before settled).
    start_streams: int = 64
    #: The receiver as this edge reaches it (empty: as the cloud says).
    receiver_url: str = ""
    stream_stall_timeout: float = 15.0

    def part_size_floor(self) -> int:
        """
        The smallest part: on the tus path a reset costs no part, and
        smaller parts keep more streams busy to the end (S3's minimum).
        """
        return min(self.min_part_size, TUS_MIN_PART_SIZE) if self.mode == "tus" else self.min_part_size


@implementer(IUploadSink)
class TransferService(Service):
    """
    See the module docstring.  C{spool} and C{store} are the uploads
    component's: the staged files and their records.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        db: Database,
        outbox: IOutbox,
        settings: TransferSettings = TransferSettings(),
        *,
        spool: Spool,
        store: UploadStore,
        target: IPartTarget | None = None,
        tus_target: ITusTarget | None = None,
        metrics: Metrics | None = None,
        blocking: Blocking | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.reactor = self.clock = reactor
        # From the database thread back to the reactor, after the transaction.
        self._notify: Callable[..., Any] = reactor.callFromThread
        self.db = db
        self.outbox = outbox
        self.settings = settings
        self.threads = Threads(reactor, "transfer-spool", settings.read_threads)
        #: Runs spool I/O and hashing off the reactor (tests: inline).
        self.blocking: Blocking = blocking or self.threads.run
        self._target = target if target is not None else HTTPPartTarget(reactor, settings.concurrency)
        policy = RetryPolicy(initial=settings.retry_initial, cap=settings.retry_cap,
                             stall_timeout=settings.stall_timeout, part_timeout=settings.part_timeout)
        self.uploader = PartUploader(reactor, self._target, DeferredSemaphore(settings.concurrency), policy)
        self.throttle = Throttle(reactor, settings.bandwidth_limit)
        self._tus_target = tus_target
        self.stream_stats = StreamStats()
        #: The tus path's streams at once, over all files: the link is one.
        self.stream_slots = DeferredSemaphore(settings.max_streams)
        self.stream_memory = StreamMemory(settings.start_streams)
        self.spool = spool
        self.store = store
        #: Takes a registered upload's spool file into the download cache
        #: (C{spool, spool_id, file_id, size, sha256, content type}); fires
        #: with whether it did (else the file is erased).
        self.keep: Callable[..., Deferred[bool]] | None = None
        self.reports = TransferReports(reactor, UploadAnnouncer(reactor, events), store)
        self._runs: dict[str, TransferRun] = {}
        self._running: dict[str, Deferred[None]] = {}
        self.restarts = 0
        self.presign_requests = 0
        self.hedges = 0
        if metrics is not None:
            self._metrics(metrics)

    def register(self, inbox: IInbox) -> None:
        """Apply the cloud's answers from C{inbox}."""
        CloudAnswers(self).register(inbox)

    def _metrics(self, metrics: Metrics) -> None:
        stats = self.uploader.stats
        metrics.gauge("transfer_active", "Uploads being transferred.", lambda: len(self._runs))
        metrics.gauge("transfer_parts_in_flight", "Part PUTs in flight.", lambda: self.uploader.in_flight)
        metrics.gauge("transfer_part_attempts", "Part PUT attempts since start.", lambda: stats.attempts)
        metrics.gauge("transfer_part_retries", "Part PUTs retried since start.", lambda: stats.retries)
        metrics.gauge("transfer_part_stalls", "Part PUTs abandoned for lack of progress.", lambda: stats.stalls)
        metrics.gauge("transfer_urls_refreshed", "Presigned URLs replaced after a refusal.",
                      lambda: stats.refreshed_urls)
        metrics.gauge("transfer_bytes_sent", "Part bytes written to S3 connections.", lambda: stats.bytes_sent)
        metrics.gauge("transfer_restarts", "Transfers started over.", lambda: self.restarts)
        metrics.gauge("transfer_part_copies", "Extra PUTs of tail parts (first answer wins).",
                      lambda: self.hedges)
        streams = self.stream_stats
        metrics.gauge("transfer_stream_patches", "PATCH requests to the receiver.", lambda: streams.patches)
        metrics.gauge("transfer_stream_resumes", "Streams resumed from the receiver's offset.",
                      lambda: streams.resumes)
        metrics.gauge("transfer_stream_bytes_sent", "Bytes written to receiver connections.",
                      lambda: streams.bytes_sent)
        metrics.gauge("transfer_stream_resent_confirmed", "Bytes sent again that S3 held already.",
                      lambda: streams.resent_confirmed)
        metrics.gauge("transfer_presign_requests", "transfer.presign requests sent.",
                      lambda: self.presign_requests)

    # -- IUploadSink ---------------------------------------------------------------

    def upload_staged(self, upload: StagedUpload) -> Deferred[None]:
        return Deferred.fromCoroutine(self._staged(upload))

    async def _staged(self, upload: StagedUpload) -> None:
        now = self.clock.seconds()
        await self.db.run(journal.add_job, upload, secrets.token_hex(16), now)
        await self.reports.moved(upload.upload_id, upload.owner, upload.length, UploadState.TRANSFERRING,
                                 transferred=0)
        self.log.info("upload {upload_id} queued for transfer ({length} bytes)",
                      upload_id=upload.upload_id, length=upload.length)
        if self.running:
            self._start(upload.upload_id, resumed=False)

    # -- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.threads.startService()
        Deferred.fromCoroutine(self._resume()).addErrback(
            lambda f: self.log.failure("could not resume transfers", f)
        )

    async def _resume(self) -> None:
        for job in await self.db.read(journal.unfinished):
            self.log.info("resuming the transfer of upload {upload_id} ({state})",
                          upload_id=job.upload_id, state=job.state.value)
            self._start(job.upload_id, resumed=job.state is JobState.SENDING)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for run in list(self._runs.values()):
            run.stop()

        async def stopped() -> None:
            await DeferredList(list(self._running.values()), consumeErrors=True)
            self.reports.announce.flush()
            for target in (self._target, self._tus_target):
                close = getattr(target, "close", None)
                if close is not None:
                    await close()
            await self.threads.stopService()

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
                         upload_id=upload_id)
        self.clock.callLater(30.0, self._restart_run, upload_id)

    def _restart_run(self, upload_id: str) -> None:
        if self.running:
            self._start(upload_id, resumed=True)

    def _run_over(self, _: Any, upload_id: str, run: TransferRun) -> None:
        if self._runs.get(upload_id) is run:
            del self._runs[upload_id]
            self._running.pop(upload_id, None)

    def tus_target(self) -> ITusTarget:
        """Where the tus path's requests go (made on first use)."""
        if self._tus_target is None:
            self._tus_target = HTTPTusTarget(self.reactor, self.settings.max_streams * 2)
        return self._tus_target

    # -- what the cloud's answers reach (AnswerContext) ---------------------------

    def after_commit(self, call: Callable[..., object], *args: Any) -> None:
        self._notify(call, *args)

    def run_of(self, upload_id: str) -> TransferRun | None:
        return self._runs.get(upload_id)

    def run_for_transfer(self, transfer_id: str) -> TransferRun | None:
        for run in self._runs.values():
            if run.transfer_id == transfer_id:
                return run
        return None

    def wake(self, upload_id: str, interrupt: bool = False) -> None:
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
            # The body may outlive its attempt: let the reader's segment
            # buffer go with it.
            opened.clear()

        return PartBody(self.clock, part.size,
                        lambda: self.blocking(next_block),
                        close, self.throttle)

    def progress(self, upload_id: str) -> TransferProgress | None:
        """Bytes S3 has confirmed of an upload in transfer (since this start)."""
        return self.reports.get(upload_id)

    async def start_over(self, job: Job, reason: str) -> None:
        """S3 lost the multipart upload: a new transfer, from scratch."""
        await self.db.run(self.start_over_in, job.upload_id, job.transfer_id, reason)
        self.wake(job.upload_id)

    def start_over_in(self, conn: Any, upload_id: str, transfer_id: str, reason: str) -> None:
        current = journal.job(conn, upload_id)
        if current is None or current.transfer_id != transfer_id:
            return
        now = self.clock.seconds()
        if current.restarts >= self.settings.max_restarts:
            journal.set_state(conn, upload_id, JobState.FAILED, now,
                              error=f"started over {current.restarts} times; last: {reason}")
            return
        new = secrets.token_hex(16)
        journal.restart(conn, upload_id, transfer_id, new, now, reason)
        self._abort(conn, transfer_id)
        self.restarts += 1
        self.log.warn("upload {upload_id}: transfer {old} starts over as {new}: {reason}",
                      upload_id=upload_id, old=transfer_id, new=new, reason=reason)

    async def fail(self, job: Job, reason: str, *, abort: bool = False) -> None:
        """
        The transfer cannot go on (the run then reports it: L{failed}); with
        C{abort}, S3 gives up its multipart upload too.
        """

        def work(conn: Any) -> None:
            if journal.set_state(conn, job.upload_id, JobState.FAILED, self.clock.seconds(),
                                 transfer_id=job.transfer_id, error=reason) and abort:
                self._abort(conn, job.transfer_id)

        await self.db.run(work)

    def retry_transfer(self, upload_id: str) -> Deferred[bool]:
        """
        Start a failed transfer over (L{IUploadSink}); the spool copy is
        still there, as every failed upload keeps it.
        """
        return Deferred.fromCoroutine(self._retry(upload_id))

    async def _retry(self, upload_id: str) -> bool:
        if upload_id in self._runs:
            return False  # still failing: its run reports it first
        job = await self.db.run(self._start_again, upload_id)
        if job is None:
            return False
        self.log.info("upload {upload_id}: its failed transfer starts over as {transfer_id}",
                      upload_id=upload_id, transfer_id=job.transfer_id)
        await self.reports.moved(upload_id, job.owner, job.size, UploadState.TRANSFERRING, transferred=0, error="")
        if self.running:
            self._start(upload_id, resumed=False)
        return True

    def _start_again(self, conn: Any, upload_id: str) -> Job | None:
        current = journal.job(conn, upload_id)
        if current is None or current.state is not JobState.FAILED:
            return None
        journal.start_again(conn, upload_id, current.transfer_id, secrets.token_hex(16), self.clock.seconds())
        self._abort(conn, current.transfer_id)
        return journal.job(conn, upload_id)

    def _abort(self, conn: Any, transfer_id: str) -> None:
        """
        In the caller's transaction: S3's multipart upload for C{transfer_id},
        if it still has one, is of no use any more.
        """
        self.outbox.put(conn, ABORT, {"transfer_id": transfer_id}, to=TO_CLOUD)
        self.notify_outbox()

    async def erase(self, job: Job) -> None:
        """
        The cloud registered the file: the spool file joins the download
        cache (L{keep}), or is crypto-erased; then the upload is C{in_cloud}.
        """
        spool = self.spool
        kept = False
        if self.keep is not None:
            try:
                kept = await self.keep(spool, job.spool_id, job.upload_id, job.size, job.sha256, job.filetype)
            except Exception:
                self.log.failure("upload {upload_id}: the cache could not take it", upload_id=job.upload_id)
        if not kept:
            await self.blocking(spool.erase, job.spool_id)
        await self.reports.moved(job.upload_id, job.owner, job.size, UploadState.IN_CLOUD, transferred=job.size,
                                 error="")
        await self.db.run(journal.set_state, job.upload_id, JobState.DONE, self.clock.seconds())
        self.log.info("upload {upload_id} is in the cloud; spool file {what}", upload_id=job.upload_id,
                      what="cached" if kept else "erased")

    async def failed(self, job: Job) -> None:
        """The transfer failed for good: the upload says why; the spool file stays."""
        upload = await self.store.get(job.upload_id)
        if upload is not None and upload.state is not UploadState.FAILED:
            await self.reports.moved(job.upload_id, job.owner, job.size, UploadState.FAILED, error=job.error)
            self.log.error("the transfer of upload {upload_id} failed: {error}",
                           upload_id=job.upload_id, error=job.error)


def build_transfers(
    section: Any, reactor: Any, db: Database, bridge: Any, metrics: Metrics, spool: Spool, store: UploadStore,
    events: EventHub | None = None,
) -> TransferService:
    """
    The edge's transfer stage from the C{[transfer]} table, with its message
    types in the bridge's catalogue and its handlers on the bridge's inbox,
    moving the uploads' staged files (C{spool}, C{store}: the same the
    uploads component is built with).
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
        mode=section.mode,
        min_streams=section.min_streams,
        max_streams=section.max_streams,
        start_streams=section.start_streams,
        receiver_url=section.receiver_url,
        stream_stall_timeout=section.stream_stall_timeout,
    )
    service = TransferService(reactor, db, bridge.outbox, settings, spool=spool, store=store, metrics=metrics,
                              events=events)
    service.register(bridge.inbox)
    return service
