"""
The uploads component: tus semantics over the store, the spool and the
locks, independent of HTTP.  L{UploadService} answers "create", "status",
"append", "terminate", "list" and "retry" for an authenticated user; the routes in
L{relay.edge.uploads.resource} translate requests and replies.

Anything refused raises L{TusError} before any state has changed.  The
owner hears of each upload's state and bytes received as they change
(L{relay.edge.uploads.announcer}).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from relay.edge.auth import IProjectAccess, Principal
from relay.edge.events import EventHub
from relay.edge.uploads.announcer import UploadAnnouncer
from relay.edge.uploads.concatenation import concatenate
from relay.edge.uploads.context import UploadLimits
from relay.edge.uploads.handoff import IUploadSink, StagedUpload
from relay.edge.uploads.locks import Lease, UploadLocks
from relay.edge.uploads.receiver import SPACE_MESSAGE, BodyReceiver, Received
from relay.edge.uploads.recovery import recover
from relay.edge.uploads.spool import Spool, SpoolError, SpoolFinalized, SpoolFull
from relay.edge.uploads.store import Upload, UploadState, UploadStore
from relay.edge.uploads.tus import OURS, filetype, sanitise_filename
from relay.threads import Threads
from relay.tus.protocol import Checksum, Creation, TusError, parse_integer, text
from relay.tus.streaming import RequestBody

__all__ = ["NOT_FOUND", "SPOOL_THREADS", "Outcome", "UploadLimits", "UploadService"]

log = Logger()

#: Threads for spool I/O, unless a pool is handed in.
SPOOL_THREADS = 8

NOT_FOUND = "no such upload (it may have expired, been deleted, or belong to someone else)"


@dataclass(frozen=True)
class Outcome:
    """What a request did: the upload as it is now, and any refusal."""

    upload: Upload
    error: TusError | None = None


class UploadService(Service):
    """
    The tus receiver's logic and its lifecycle: a thread pool for spool
    I/O, recovery at startup (offsets caught up with the spool, staged
    uploads handed on again, orphans erased), and at shutdown every
    in-flight body flushed before the database closes.

    @param threads: the pool for spool I/O, started and stopped with the
        service (by default one of L{SPOOL_THREADS} threads).
    @ivar ready: recovery is done; until then requests get 503.
    """

    def __init__(
        self,
        reactor: Any,
        store: UploadStore,
        spool: Spool,
        sink: IUploadSink,
        projects: IProjectAccess,
        limits: UploadLimits,
        prefix: str = "/files/",
        threads: Threads | None = None,
        events: EventHub | None = None,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.spool = spool
        self.sink = sink
        self.projects = projects
        self.limits = limits
        self.prefix = prefix
        self.locks = UploadLocks(reactor, limits.lock_stale_after, limits.lock_wait)
        self.threads = threads if threads is not None else Threads(reactor, "spool", SPOOL_THREADS)
        self.ready = False
        self._recovery: Deferred[None] | None = None
        self.announce = UploadAnnouncer(reactor, events)
        self._creating: Counter[str] = Counter()

    # Lifecycle.

    def startService(self) -> None:
        super().startService()
        self.threads.startService()
        self._recovery = Deferred.fromCoroutine(self.recover())
        self._recovery.addErrback(lambda f: log.failure("upload recovery failed", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._recovery is not None:
            await self._recovery
        leases = self.locks.active()
        for lease in leases:
            lease.abort()
        waits = [lease.released() for lease in leases]
        for d in waits:
            d.addTimeout(30, self.reactor)
        await DeferredList(waits, consumeErrors=True)
        await self.threads.stopService()
        self.announce.flush()

    def now(self) -> float:
        return float(self.reactor.seconds())

    # Requests.

    async def create(
        self,
        principal: Principal,
        creation: Creation,
        body: RequestBody | None,
        checksum: Checksum | None,
        abort: Callable[[], None],
    ) -> Outcome:
        """A new upload (creation; with a body: creation-with-upload)."""
        self._check_ready()
        if creation.concat == "final":
            return Outcome(await concatenate(self, principal, creation, abort))
        length = creation.length
        if length is not None and length > self.limits.max_size:
            raise TusError(413, f"the upload is {length} bytes; this edge accepts at most "
                                f"{self.limits.max_size} (Tus-Max-Size)")
        owner = principal.user_id
        # Counted from the store and the creations in flight, so that
        # concurrent creations cannot pass the cap together.
        self._creating[owner] += 1
        try:
            unfinished = await self.store.unfinished(owner) + self._creating[owner] - 1
            if unfinished >= self.limits.max_unfinished:
                raise TusError(429, f"you have {unfinished} unfinished uploads at this edge, the most "
                                    "allowed; finish or delete some first")
            return await self._create(principal, creation, body, checksum, abort, length)
        finally:
            self._creating[owner] -= 1
            if not self._creating[owner]:
                del self._creating[owner]

    async def _create(
        self, principal: Principal, creation: Creation, body: RequestBody | None, checksum: Checksum | None,
        abort: Callable[[], None], length: int | None,
    ) -> Outcome:
        project = await self.project_for(principal, creation)
        await self._check_quota(principal, length or 0)
        if length and self.spool.free_bytes() - length < self.limits.disk_reserve:
            raise TusError(507, "the edge has not enough disk space for this upload now")
        now = self.now()
        upload = Upload(
            id=secrets.token_hex(16), owner=principal.user_id, project=project,
            filename=sanitise_filename(creation.metadata.get("filename")),
            filetype=filetype(creation.metadata),
            length=length, raw_metadata=creation.raw_metadata, concat=creation.concat or "",
            created=now, updated=now, expires=now + self.limits.expiry,
        )
        try:
            writer = await self.threads.run(self.spool.create, upload.id)
        except SpoolFull:
            raise TusError(507, SPACE_MESSAGE) from None
        await self.threads.run(writer.close)
        await self.store.add(upload)
        self.announce.state(upload.owner, upload.id, upload.state.value)
        log.info("upload {upload_id} created by {user} ({length} bytes)",
                 upload_id=upload.id, user=principal.user_id, length=length)
        if length == 0:
            return Outcome(await self._append(upload, None, None, abort))
        if body is not None and (body.received or not body.done):
            return await self._append_outcome(upload, body, checksum, abort)
        return Outcome(upload)

    async def status(self, principal: Principal, upload_id: str) -> Upload:
        """The upload's record (HEAD), owner only."""
        self._check_ready()
        return await self.owned(principal, upload_id)

    async def append(
        self,
        principal: Principal,
        upload_id: str,
        offset: str | None,
        length: str | None,
        checksum: Checksum | None,
        body: RequestBody,
        abort: Callable[[], None],
    ) -> Outcome:
        """PATCH: append the body at C{offset}."""
        self._check_ready()
        upload = await self.owned(principal, upload_id)
        if upload.concat == "final":
            raise TusError(403, "this is the final upload of a concatenation; it takes no PATCH")
        if offset is None:
            raise TusError(400, "Upload-Offset is required")
        at = parse_integer("Upload-Offset", offset)
        declared = parse_integer("Upload-Length", length) if length is not None else None
        if declared is not None and upload.length is not None and declared != upload.length:
            raise TusError(400, f"Upload-Length is already {upload.length}")
        if declared is not None and declared < upload.offset:
            raise TusError(400, f"Upload-Length {declared} is less than the "
                                f"{upload.offset} bytes already received")
        if declared is not None and declared > self.limits.max_size:
            raise TusError(413, f"Upload-Length exceeds the maximum of {self.limits.max_size}")
        if body.expected is not None:
            total = declared if declared is not None else upload.length
            if total is not None and at + body.expected > total:
                raise TusError(413, f"the body would end at {at + body.expected}, past the "
                                    f"upload's length of {total}")
        lease = await self.locks.acquire(upload_id, abort)
        try:
            upload = await self.owned(principal, upload_id)
            if at != upload.offset:
                raise TusError(409, f"Upload-Offset is {at} but the upload holds {upload.offset} "
                                    "bytes; ask with HEAD and continue from there",
                               {"Upload-Offset": str(upload.offset)})
            if upload.state is not UploadState.RECEIVING:
                if not body.expected:
                    return Outcome(upload)
                raise TusError(403, "the upload is complete; it takes no more bytes")
            # A receiving upload whose bytes are all in (a crash came before
            # it was finalized) is finished by an empty append.
            if declared is not None and upload.length is None:
                if declared < upload.offset:
                    raise TusError(400, f"Upload-Length {declared} is less than the "
                                        f"{upload.offset} bytes already received")
                await self.store.declare_length(upload_id, declared, self.now())
                upload = upload.replace(length=declared)
            return await self._append_held(upload, body, checksum, lease)
        finally:
            lease.release()

    async def terminate(self, principal: Principal, upload_id: str, abort: Callable[[], None]) -> None:
        """DELETE: stop any writer, erase the bytes (crypto-erase), forget the upload."""
        self._check_ready()
        upload = await self.owned(principal, upload_id)
        if upload.state is not UploadState.RECEIVING:
            raise TusError(409, f"the upload is complete ({upload.state.value}) and belongs to "
                                "the transfer stage now; it cannot be terminated")
        lease = await self.locks.acquire(upload_id, abort, take_over=True)
        try:
            await self.erase([upload_id])
        finally:
            lease.release()
        self.announce.removed(upload.owner, upload_id, "terminated")
        log.info("upload {upload_id} terminated", upload_id=upload_id)

    async def retry(self, principal: Principal, upload_id: str) -> Upload:
        """
        Start a failed transfer over, from the spool copy it kept (owner
        only); the upload as it is now.
        """
        self._check_ready()
        upload = await self.owned(principal, upload_id)
        if upload.state is not UploadState.FAILED:
            raise TusError(409, f"the upload is {upload.state.value}; only a failed transfer can be retried")
        if not await self.sink.retry_transfer(upload_id):
            raise TusError(409, "the transfer cannot be started over now; reload and look again")
        log.info("upload {upload_id}: {user} retries its transfer", upload_id=upload_id, user=principal.user_id)
        return await self.get_owned(principal, upload_id)

    async def listing(self, principal: Principal) -> list[Upload]:
        """The user's uploads, newest first, with live offsets of active ones."""
        return [self._live(u) for u in await self.store.owned_by(principal.user_id)]

    async def get_owned(self, principal: Principal, upload_id: str) -> Upload:
        """One of the user's uploads, with its live offset."""
        return self._live(await self.owned(principal, upload_id))

    def _live(self, upload: Upload) -> Upload:
        lease = self.locks.holder(upload.id)
        if lease is not None and lease.offset is not None and lease.offset > upload.offset:
            return upload.replace(offset=lease.offset)
        return upload

    # Housekeeping.

    async def expire(self) -> list[str]:
        """Crypto-erase unfinished uploads whose expiry has passed; returns their ids."""
        due = [u for u in await self.store.expired(self.now()) if not self.locks.holder(u.id)]
        if due:
            await self.erase([u.id for u in due])
            for upload in due:
                self.announce.removed(upload.owner, upload.id, "expired")
                log.info("upload {upload_id} expired and erased", upload_id=upload.id)
        return [u.id for u in due]

    async def recover(self) -> None:
        """After a start: see L{relay.edge.uploads.recovery}."""
        await recover(self)
        self.ready = True

    # Shared with the recovery and concatenation modules.

    def _check_ready(self) -> None:
        if not self.ready:
            raise TusError(503, "the upload service is starting; retry in a moment",
                           {"Retry-After": "1"})

    async def owned(self, principal: Principal, upload_id: str) -> Upload:
        upload = await self.store.get(upload_id) if OURS.match(upload_id) else None
        if upload is None or upload.owner != principal.user_id:
            raise TusError(404, NOT_FOUND)
        return upload

    async def project_for(self, principal: Principal, creation: Creation) -> str:
        wanted = text(creation.metadata.get("project")).strip()
        if not wanted:
            try:
                return await self.projects.default_project(principal.user_id)
            except LookupError:
                # The replica has not received the user's default project yet.
                raise TusError(503, "your default project has not reached this edge yet; "
                                    "retry shortly or name a project", {"Retry-After": "5"}) from None
        if not await self.projects.can_write(principal.user_id, wanted):
            raise TusError(403, f"you may not add files to project {wanted[:64]!r}")
        return wanted

    async def _check_quota(self, principal: Principal, more: int) -> None:
        quota = self.limits.user_quota
        if not quota:
            return
        held = await self.store.held_bytes(principal.user_id)
        if held + more > quota:
            raise TusError(413, f"this upload would take your uploads waiting at this edge to "
                                f"{held + more} bytes, over your limit of {quota}; retry once "
                                "earlier uploads have reached the cloud")

    async def _append_outcome(
        self, upload: Upload, body: RequestBody, checksum: Checksum | None, abort: Callable[[], None]
    ) -> Outcome:
        lease = await self.locks.acquire(upload.id, abort)
        try:
            return await self._append_held(upload, body, checksum, lease)
        finally:
            lease.release()

    async def _append(
        self, upload: Upload, body: RequestBody | None, checksum: Checksum | None,
        abort: Callable[[], None],
    ) -> Upload:
        if body is None:
            return await self.complete(upload)
        return (await self._append_outcome(upload, body, checksum, abort)).upload

    async def _append_held(
        self, upload: Upload, body: RequestBody, checksum: Checksum | None, lease: Lease
    ) -> Outcome:
        """Receive C{body} into C{upload}, whose lease the caller holds."""
        try:
            writer = await self.threads.run(self.spool.open_writer, upload.id)
        except SpoolFinalized:
            length = await self.threads.run(self.spool.length, upload.id)
            return Outcome(await self.complete(upload.replace(length=length, offset=length)))
        try:
            if writer.offset != upload.offset:
                await self.store.record_offset(upload.id, writer.offset, self.now(), upload.expires)
                raise TusError(409, f"the upload holds {writer.offset} bytes; ask with HEAD",
                               {"Upload-Offset": str(writer.offset)})
            limit, limit_error = await self._limit(upload)
            declared = upload
            receiver = BodyReceiver(
                self.threads, self.spool, writer, lease, limit, limit_error,
                self.limits.disk_reserve, self.limits.checksum_memory,
                lambda offset: self.announce.received(declared.owner, declared.id, offset, declared.length),
            )
            received: Received = await receiver.receive(body, checksum)
            now = self.now()
            upload = upload.replace(offset=received.offset, updated=now)
            if upload.length is not None and received.offset == upload.length:
                await self.threads.run(writer.finalize)
                return Outcome(await self.complete(upload), received.error)
            upload = upload.replace(expires=now + self.limits.expiry)
            await self.store.record_offset(upload.id, received.offset, now, upload.expires)
            # What was kept (a checksum mismatch discards what was accepted).
            self.announce.received(upload.owner, upload.id, received.offset, upload.length)
            if received.interrupted:
                log.info("upload {upload_id}: connection lost at {offset}, bytes kept",
                         upload_id=upload.id, offset=received.offset)
            return Outcome(upload, received.error)
        finally:
            await self.threads.run(_close_quietly, writer)

    async def _limit(self, upload: Upload) -> tuple[int, TusError]:
        if upload.length is not None:
            return upload.length, TusError(413, f"the body goes past the upload's length of "
                                                f"{upload.length} bytes")
        limit = self.limits.max_size
        error = TusError(413, f"the upload exceeds the maximum size of {limit} bytes")
        if self.limits.user_quota:
            held = await self.store.held_bytes(upload.owner)
            room = upload.offset + max(0, self.limits.user_quota - held)
            if room < limit:
                limit, error = room, TusError(413, "the upload exceeds your limit of "
                                                   f"{self.limits.user_quota} bytes waiting "
                                                   "at this edge")
        return limit, error

    async def complete(self, upload: Upload) -> Upload:
        """Every byte is durable: record it and hand the upload on."""
        assert upload.length is not None
        now = self.now()
        if upload.concat == "partial":
            await self.store.record_offset(upload.id, upload.length, now, upload.expires)
            return upload.replace(offset=upload.length)
        if upload.length == 0:
            writer = await self.threads.run(self.spool.open_writer, upload.id)
            await self.threads.run(writer.finalize)
            await self.threads.run(writer.close)
        await self.store.mark_complete(upload.id, upload.length, UploadState.STAGED, now)
        upload = upload.replace(offset=upload.length, state=UploadState.STAGED, expires=None)
        self.announce.state(upload.owner, upload.id, upload.state.value)
        log.info("upload {upload_id} complete ({length} bytes)",
                 upload_id=upload.id, length=upload.length)
        self.hand_off(upload)
        return upload

    def hand_off(self, upload: Upload) -> None:
        assert upload.length is not None
        staged = StagedUpload(upload.id, upload.id, upload.owner, upload.project,
                              upload.filename, upload.filetype, upload.length)
        d = Deferred.fromCoroutine(_call(self.sink.upload_staged, staged))
        d.addErrback(lambda f: log.failure("handing upload {upload_id} on failed", f,
                                           upload_id=upload.id))

    async def erase(self, upload_ids: Sequence[str] | dict[str, None]) -> None:
        ids = list(upload_ids)
        await self.threads.run(lambda: [self.spool.erase(i) for i in ids])
        await self.store.remove(ids)


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    await fn(*args)


def _close_quietly(writer: Any) -> None:
    try:
        writer.close()
    except (OSError, SpoolError):
        log.failure("closing spool writer {file_id}", file_id=writer.file_id)


