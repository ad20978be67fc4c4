"""
The cloud's half of the transfer stage: the edges' requests about their
multipart uploads, answered over the outbox.

The inbox handlers run in the inbox's transaction, where no network I/O
belongs: they only record each request in C{transfer_requests}.
L{CloudTransfers} then works through that table, one request at a time per
transfer and in arrival order (a C{transfer.presign} right behind its
C{transfer.begin} finds the upload open), calls S3 through an
L{IObjectStore}, and commits its reply together with the new state and the
request's removal.  A request whose S3 call fails for a passing reason stays
and is tried again with backoff, also after a restart; so each handler is
idempotent (a repeated C{transfer.begin} answers with the same upload, a
repeated C{transfer.finish} with the same registration).

C{transfer.finish} completes the upload only when every planned part is in
S3 with the size and MD5 the edge announced, checks the object (size, the
sha256 in its metadata, the multipart ETag, optionally a read-back hash),
and registers the file (L{IFileRegistry}) in the same transaction that puts
C{file.registered} for the edge.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from relay.cloud.objects import (
    SHA256_METADATA,
    IObjectStore,
    NoSuchUpload,
    ObjectStoreError,
    S3Objects,
    load_credentials,
    object_key,
)
from relay.cloud.receiver import store as receiver_store
from relay.cloud.receiver.tokens import TokenIssuer
from relay.cloud.transfer_store import SCHEMA as SCHEMA  # the cloud's tap lists it
from relay.cloud.transfer_store import (
    Request,
    Transfer,
    digests_of,
    due_requests,
    load_transfer,
    missing_parts,
    record_completed,
    record_postponed,
    remember_digests,
    verify_object,
)
from relay.config import relative_to
from relay.db import Database
from relay.drain import Drain
from relay.link.envelope import Envelope, to_edge
from relay.media_types import stored_content_type
from relay.permissions import Refused, allowed
from relay.replication import IInbox, IOutbox
from relay.transfer_messages import (
    ABORT,
    ABORTED,
    AUTHORIZE,
    AUTHORIZED,
    BEGIN,
    FAILED,
    FINISH,
    MAX_PARTS_PAGE,
    MAX_PRESIGN_BATCH,
    PARTS,
    PRESIGN,
    REGISTERED,
    REQUESTS,
    STARTED,
    STATUS,
    URLS,
    register_types,
)


class IFileRegistry(Interface):
    """
    Where a transferred file becomes part of its project: the registry,
    whose change reaches every edge through sync (L{RegistryFiles}).
    """

    def register_file(conn: Any, transfer: Transfer) -> None:
        """
        Record the file, inside the caller's transaction.

        @raise relay.permissions.Refused: the file may not be added.
        """


@implementer(IFileRegistry)
class RegistryFiles:
    """
    Registration through L{relay.cloud.registry.Registry}: the owner must
    still be allowed to add files to the project.
    """

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def register_file(self, conn: Any, transfer: Transfer) -> None:
        if not allowed(self._registry.role(conn, transfer.project, transfer.owner), "file.write"):
            raise Refused("the uploader may not add files to this project (any more)", "forbidden")
        self._registry.put_file(
            conn, transfer.project, transfer.name, transfer.size, sha256=transfer.sha256,
            object_key=transfer.object_key, state="stored", file_id=transfer.file_id,
            uploaded_by=transfer.owner,
        )


class Reply(Exception):
    """
    Ends a request with one reply (and a state change) instead of the
    handler's normal outcome.
    """

    def __init__(self, type: str, body: dict[str, Any], state: str | None = None, error: str = "") -> None:
        super().__init__(type)
        self.type = type
        self.body = body
        self.state = state
        self.error = error


def failed(transfer_id: str, code: str, reason: str, state: str | None = None,
           missing: list[int] | None = None) -> Reply:
    body: dict[str, Any] = {"transfer_id": transfer_id, "code": code, "reason": reason[:2000]}
    if missing is not None:
        body["missing"] = missing
    return Reply(FAILED, body, state, reason)


def edge_of(message: Envelope) -> str | None:
    kind, _, name = message.source.partition(":")
    return name if kind == "edge" and name else None


class CloudTransfers(Service):
    """
    Processes the edges' transfer requests (see the module docstring).

    @param presign_expiry: seconds a presigned URL lives.
    @param readback: after completing, read the object back and compare
        its sha256 too (costs a full read inside the region).
    @param concurrency: requests processed at once (different transfers).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        db: Database,
        outbox: IOutbox,
        objects: IObjectStore,
        files: IFileRegistry,
        *,
        presign_expiry: int = 3600,
        readback: bool = False,
        concurrency: int = 16,
        retry_cap: float = 60.0,
        poll_interval: float = 5.0,
        rng: random.Random | None = None,
        tokens: TokenIssuer | None = None,
    ) -> None:
        self._reactor = reactor
        self._db = db
        self._outbox = outbox
        self._objects = objects
        self._files = files
        self._expiry = presign_expiry
        self._readback = readback
        self._slots = DeferredSemaphore(concurrency)
        self._retry_cap = retry_cap
        self._poll_interval = poll_interval
        self._rng = rng if rng is not None else random.Random()
        self._tokens = tokens
        self._busy: set[str] = set()
        # Transfers whose last request failed rest until then, even if the
        # failure could not be recorded.
        self._resting: dict[str, float] = {}
        self._requests = Drain(self._start_due, self._reading_failed, ready=lambda: bool(self.running))
        self._timer: IDelayedCall | None = None
        self._working: set[Deferred[None]] = set()
        self.processed = 0

    def register(self, inbox: IInbox) -> None:
        """
        Handle the edges' requests from C{inbox}.
        """
        for kind in REQUESTS:
            inbox.register(kind, self._record)

    # -- the inbox side (database thread, inside the inbox's transaction) ------

    def _record(self, conn: Any, message: Envelope) -> None:
        edge = edge_of(message)
        if edge is None:
            self.log.warn("transfer request {id} from {source}, not an edge: ignored",
                          id=message.id, source=message.source)
            return
        conn.execute(
            "INSERT INTO transfer_requests (transfer_id, edge, kind, body, received) VALUES (?, ?, ?, ?, ?)",
            (message.body["transfer_id"], edge, message.type, json.dumps(message.body), message.time),
        )
        # From the database thread back to the reactor: runs after this
        # transaction, since the database thread is serial.
        self._reactor.callFromThread(self.wake)

    # -- the service -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        return DeferredList(list(self._working), consumeErrors=True).addCallback(lambda _: None)

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self._reactor.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self._reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.wake()
        self._schedule(self._poll_interval)

    def wake(self) -> None:
        """
        There may be requests to process.
        """
        if self.running:
            self._requests.wake()

    async def _start_due(self) -> bool:
        """
        Start processing every due request of a transfer that is not busy.
        """
        rows = await self._db.read(due_requests, self._reactor.seconds(), sorted(self._busy))
        now = self._reactor.seconds()
        for request in rows:
            if request.transfer_id in self._busy or self._resting.get(request.transfer_id, 0) > now:
                continue
            self._resting.pop(request.transfer_id, None)
            self._busy.add(request.transfer_id)
            d = self._slots.run(self._process, request)
            self._working.add(d)
            d.addBoth(self._finished, d)
        return False

    def _reading_failed(self, failure: Failure) -> None:
        self.log.failure("could not read transfer requests; trying again shortly", failure)
        self._schedule(1.0)

    def _finished(self, result: Any, d: Deferred[None]) -> None:
        self._working.discard(d)

    async def _process(self, request: Request) -> None:
        try:
            await self._handle(request)
            self.processed += 1
        except Exception as e:
            await self._postpone(request, e)
        finally:
            self._busy.discard(request.transfer_id)
            self.wake()

    async def _postpone(self, request: Request, error: Exception) -> None:
        attempts = request.attempts + 1
        # 0.5-1 s, 1-2 s, 2-4 s ... up to the cap.
        delay = min(self._retry_cap, 2.0 ** min(attempts - 1, 10)) * self._rng.uniform(0.5, 1.0)
        self._resting[request.transfer_id] = self._reactor.seconds() + delay
        if isinstance(error, ObjectStoreError):
            self.log.warn("{kind} for transfer {tid} failed (attempt {attempts}): {error}; again in {delay:.1f}s",
                          kind=request.kind, tid=request.transfer_id, attempts=attempts,
                          error=str(error), delay=delay)
        else:
            self.log.failure("{kind} for transfer {tid} failed; again in {delay:.1f}s", None,
                             kind=request.kind, tid=request.transfer_id, delay=delay)
        try:
            await self._db.run(record_postponed, request.position, attempts,
                               self._reactor.seconds() + delay, str(error)[:500])
        except Exception:
            self.log.failure("could not record the failure of request {position}", position=request.position)
        self._schedule(delay)

    async def _handle(self, request: Request) -> None:
        transfer = await self._db.read(load_transfer, request.transfer_id)
        handler: Callable[[Request, Any], Any] = {
            BEGIN: self._begin, PRESIGN: self._presign, STATUS: self._status,
            FINISH: self._finish, ABORT: self._abort, AUTHORIZE: self._authorize,
        }[request.kind]
        try:
            if request.kind != BEGIN:
                transfer = self._check(request, transfer)
            replies, state = await handler(request, transfer), None
        except Reply as reply:
            replies, state = [(reply.type, reply.body)], reply.state
            if reply.type == FAILED:
                self.log.warn("transfer {tid}: {kind} failed: {code}: {reason}", tid=request.transfer_id,
                              kind=request.kind, code=reply.body["code"], reason=reply.body["reason"])
        await self._db.run(self._answer, request, replies, state, "")
        self._outbox.wake()

    def _check(self, request: Request, transfer: Transfer | None) -> Transfer:
        if transfer is None or transfer.edge != request.edge:
            raise failed(request.transfer_id, "invalid", "this cloud knows no such transfer from this edge")
        return transfer

    def _answer(self, conn: Any, request: Request, replies: list[tuple[str, dict[str, Any]]],
                state: str | None, error: str) -> None:
        for type, body in replies:
            self._outbox.put(conn, type, body, to=to_edge(request.edge))
        if state is not None:
            conn.execute("UPDATE transfers SET state = ?, error = ?, updated = ? WHERE id = ? AND edge = ?",
                          (state, error, self._reactor.seconds(), request.transfer_id, request.edge))
        conn.execute("DELETE FROM transfer_requests WHERE position = ?", (request.position,))

    # -- the requests ----------------------------------------------------------

    async def _begin(self, request: Request, transfer: Transfer | None) -> list[tuple[str, dict[str, Any]]]:
        body, tid = request.body, request.transfer_id
        if transfer is not None:
            self._check(request, transfer)
            if transfer.state in ("aborted", "failed"):
                raise failed(tid, "no_such_upload", f"this transfer is {transfer.state}; start a new one")
            return [(STARTED, {"transfer_id": tid, "object_key": transfer.object_key})]
        size, part_size, count = body["size"], body["part_size"], body["part_count"]
        if count != max(1, -(-size // part_size)):
            raise failed(tid, "invalid", f"{count} parts of {part_size} bytes cannot hold {size} bytes")
        key = object_key(body["project"], body["file_id"])
        metadata = {SHA256_METADATA: body["sha256"], "relay-transfer": tid, "relay-file-id": body["file_id"]}
        # The object's Content-Type is relay's choice, never the edge's (or
        # its client's) raw value.
        upload_id = await self._objects.create_upload(key, metadata, stored_content_type(body["content_type"]))
        new = Transfer(
            tid, request.edge, body["file_id"], body["project"], body["owner"], body["name"],
            body["content_type"], size, body["sha256"], part_size, count, key, upload_id, "open",
        )
        await self._db.run(self._insert, new)
        self.log.info("transfer {tid}: {key} open for edge {edge} ({size} bytes, {count} parts)",
                      tid=tid, key=key, edge=request.edge, size=size, count=count)
        return [(STARTED, {"transfer_id": tid, "object_key": key})]

    def _insert(self, conn: Any, t: Transfer) -> None:
        now = self._reactor.seconds()
        conn.execute(
            "INSERT INTO transfers (id, edge, file_id, project, owner, name, content_type, size, sha256, "
            "part_size, part_count, object_key, upload_id, state, created, updated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
            (t.id, t.edge, t.file_id, t.project, t.owner, t.name, t.content_type, t.size, t.sha256,
             t.part_size, t.part_count, t.object_key, t.upload_id, now, now),
        )

    async def _presign(self, request: Request, t: Transfer) -> list[tuple[str, dict[str, Any]]]:
        self._must_be_open(t)
        parts = [(p["number"], p["md5"]) for p in request.body["parts"]]
        if any(n > t.part_count for n, _ in parts):
            raise failed(t.id, "invalid", f"this transfer has {t.part_count} parts")
        urls = await self._objects.presign_parts(t.object_key, t.upload_id, parts, self._expiry)
        await self._db.run(remember_digests, t.id, parts)
        return [
            (URLS, {"transfer_id": t.id, "expires_in": self._expiry,
                    "urls": [{"number": n, "url": urls[n]} for n, _ in parts[i:i + MAX_PRESIGN_BATCH]]})
            for i in range(0, len(parts), MAX_PRESIGN_BATCH)
        ]

    async def _status(self, request: Request, t: Transfer) -> list[tuple[str, dict[str, Any]]]:
        self._must_be_open(t)
        try:
            parts = await self._objects.list_parts(t.object_key, t.upload_id)
        except NoSuchUpload:
            raise failed(t.id, "no_such_upload", "S3 no longer has this multipart upload", "aborted") from None
        pages = [parts[i:i + MAX_PARTS_PAGE] for i in range(0, len(parts), MAX_PARTS_PAGE)] or [[]]
        return [
            (PARTS, {"transfer_id": t.id, "request_id": request.body["request_id"], "page": number,
                     "last": number == len(pages),
                     "parts": [{"number": p.number, "size": p.size, "etag": p.etag} for p in page]})
            for number, page in enumerate(pages, start=1)
        ]

    async def _finish(self, request: Request, t: Transfer) -> list[tuple[str, dict[str, Any]]]:
        if t.state == "registered":
            return [self._registered(t)]
        if t.state in ("aborted", "failed"):
            raise failed(t.id, "no_such_upload", f"this transfer is {t.state}; start a new one")
        digests = await self._db.read(digests_of, t.id)
        etag = t.etag
        if t.state == "open":
            try:
                parts = await self._objects.list_parts(t.object_key, t.upload_id)
            except NoSuchUpload:
                # Completed before a crash let us record it?  Only if the
                # object is this transfer's.
                info = await self._objects.head(t.object_key)
                if info is None or info.metadata.get("relay-transfer") != t.id:
                    raise failed(t.id, "no_such_upload", "S3 no longer has this multipart upload",
                                 "aborted") from None
                etag = info.etag
            else:
                missing = missing_parts(t, parts, digests)
                if missing:
                    raise failed(t.id, "incomplete", f"{len(missing)} parts are not in S3 as announced",
                                 missing=missing)
                by_number = {p.number: p for p in parts}
                etag = await self._objects.complete_upload(
                    t.object_key, t.upload_id, [(n, by_number[n].etag) for n in range(1, t.part_count + 1)]
                )
            await self._db.run(record_completed, t.id, etag, self._reactor.seconds())
            t = replace(t, state="completed", etag=etag)
        info = await self._objects.head(t.object_key)
        problem = verify_object(t, info, etag, digests)
        if problem is None and self._readback:
            actual = await self._objects.sha256(t.object_key)
            if actual != t.sha256:
                problem = f"the object's sha256 is {actual}, not {t.sha256}"
        if problem is not None:
            raise failed(t.id, "mismatch", problem, "failed")
        try:
            await self._db.run(self._register, t)
        except Refused as e:
            raise failed(t.id, "refused", e.reason, "failed") from None
        self.log.info("transfer {tid}: {key} complete and registered ({size} bytes, sha256 {sha256})",
                      tid=t.id, key=t.object_key, size=t.size, sha256=t.sha256)
        return []  # the registration's transaction carried the reply

    def _register(self, conn: Any, t: Transfer) -> None:
        self._files.register_file(conn, t)
        conn.execute("UPDATE transfers SET state = 'registered', updated = ? WHERE id = ?",
                     (self._reactor.seconds(), t.id))
        receiver_store.forget_transfer(conn, t.id)
        type, body = self._registered(t)
        self._outbox.put(conn, type, body, to=to_edge(t.edge))

    def _registered(self, t: Transfer) -> tuple[str, dict[str, Any]]:
        return REGISTERED, {"transfer_id": t.id, "file_id": t.file_id, "project": t.project,
                            "object_key": t.object_key, "size": t.size, "sha256": t.sha256,
                            "etag": t.etag}

    async def _abort(self, request: Request, t: Transfer) -> list[tuple[str, dict[str, Any]]]:
        if t.state in ("open", "failed"):
            await self._objects.abort_upload(t.object_key, t.upload_id)
        if t.state != "registered":
            raise Reply(ABORTED, {"transfer_id": t.id}, "aborted")
        return [(ABORTED, {"transfer_id": t.id})]

    async def _authorize(self, request: Request, t: Transfer) -> list[tuple[str, dict[str, Any]]]:
        self._must_be_open(t)
        tokens = self._tokens
        if tokens is None:
            raise failed(t.id, "no_receiver", "this cloud runs no transfer receiver; send the parts directly")
        issued = await self._db.run(tokens.issue, t.id, self._reactor.seconds())
        return [(AUTHORIZED, {"transfer_id": t.id, "token": issued.token, "expires_in": issued.expires_in,
                              "url": issued.url})]

    def finish_later(self, conn: Any, t: Transfer) -> None:
        """
        In the caller's transaction: complete C{t} as a C{transfer.finish}
        from its edge would (the receiver's final upload).
        """
        conn.execute(
            "INSERT INTO transfer_requests (transfer_id, edge, kind, body, received) VALUES (?, ?, ?, ?, ?)",
            (t.id, t.edge, FINISH, json.dumps({"transfer_id": t.id}), self._reactor.seconds()),
        )
        self._reactor.callFromThread(self.wake)

    def _must_be_open(self, t: Transfer) -> None:
        if t.state != "open":
            raise failed(t.id, "no_such_upload" if t.state in ("aborted", "failed") else "invalid",
                         f"this transfer is {t.state}")


def build_objects(s3: Any, reactor: Any, base: Path) -> S3Objects:
    """
    The cloud's bucket from the C{[s3]} table (credentials read from
    C{s3.credentials_file} relative to C{base}).
    """
    credentials = None
    if s3.credentials_file:
        try:
            credentials = load_credentials(relative_to(base, Path(s3.credentials_file)))
        except ValueError as e:
            raise SystemExit(f"relay-cloud: {e}") from None
    return S3Objects(
        reactor, bucket=s3.bucket, region=s3.region, endpoint_url=s3.endpoint_url,
        presign_endpoint_url=s3.presign_endpoint_url, addressing_style=s3.addressing_style,
        credentials=credentials, max_threads=s3.max_threads,
    )


def build_transfers(
    s3: Any, reactor: Any, db: Database, bridge: Any, files: IFileRegistry, objects: IObjectStore,
    tokens: TokenIssuer | None = None,
) -> CloudTransfers:
    """
    The cloud's transfer stage from the C{[s3]} table: the request
    processor, its message types in the bridge's catalogue and its handlers
    on the bridge's inbox.  Start C{objects} before it.  With C{tokens}
    (this cloud runs a receiver) it answers C{transfer.authorize}.
    """
    register_types(bridge.catalogue)
    transfers = CloudTransfers(reactor, db, bridge.outbox, objects, files,
                               presign_expiry=s3.presign_expiry, readback=s3.verify_readback, tokens=tokens)
    transfers.register(bridge.inbox)
    return transfers
