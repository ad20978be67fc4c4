"""
The receiver's protocol logic, apart from HTTP: who may write, what each
tus request does to a transfer's partial uploads, and when bytes go to S3.
L{relay.cloud.receiver.resource} feeds it parsed requests and turns its
answers (and L{TusError}s) into responses.

Authentication: C{Authorization: Bearer <token>}, a token the cloud issued
over AMQP for one transfer (L{relay.cloud.receiver.tokens}).  No, unknown,
replaced or expired token: 401.  A token for another transfer: 403.  A
transfer that is not open (or not known): 404.  Nothing is stored for a
refused request.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from relay.cloud.objects import IObjectStore, NoSuchUpload, ObjectStoreError
from relay.cloud.receiver import store
from relay.cloud.receiver.partials import PartialUpload, PartMismatch
from relay.cloud.receiver.store import PartialRecord
from relay.cloud.receiver.tokens import token_hash
from relay.cloud.transfer_store import (
    Transfer,
    digests_of,
    load_transfer,
    missing_parts,
    remember_digests,
)
from relay.db import Database
from relay.tus.protocol import CHECKSUM_MISMATCH, Checksum, Creation, TusError
from relay.tus.streaming import BodyInterrupted, RequestBody


@dataclass
class Answer:
    """A successful reply: status and tus headers."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)


class ReceiverSettings:
    """
    @param max_streams: partial uploads holding a part in memory at once,
        over all transfers (memory is at most this many parts).
    @param checksum_limit: the largest PATCH body that may carry an
        C{Upload-Checksum} (it is held whole until verified).
    """

    def __init__(self, max_streams: int = 64, checksum_limit: int = 16 << 20,
                 part_attempts: int = 4) -> None:
        self.max_streams = max_streams
        self.checksum_limit = checksum_limit
        self.part_attempts = part_attempts


class TransferReceiver:
    """
    See the module docstring.  C{finish} queues the transfer's completion
    (C{transfer.finish}, as if the edge had sent it) in a transaction.
    """

    log = Logger()

    def __init__(self, reactor: Any, db: Database, objects: IObjectStore,
                 finish: Callable[[Any, Transfer], None], settings: ReceiverSettings,
                 rng: random.Random | None = None) -> None:
        self._reactor = reactor
        self._db = db
        self._objects = objects
        self._finish = finish
        self._settings = settings
        self._rng = rng or random.Random()
        self._partials: dict[tuple[str, int], PartialUpload] = {}
        self.parts_stored = 0
        self.bytes_received = 0

    # -- who may write -----------------------------------------------------------

    async def authorize(self, authorization: str | None, transfer_id: str) -> Transfer:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TusError(401, "a bearer token for this transfer is required",
                           {"WWW-Authenticate": 'Bearer realm="relay-transfers"'})
        found = await self._db.read(store.token, token_hash(token.strip()))
        if found is None or found[1] <= self._reactor.seconds():
            raise TusError(401, "the token is unknown, replaced or expired; ask the cloud for a new one",
                           {"WWW-Authenticate": 'Bearer realm="relay-transfers", error="invalid_token"'})
        if found[0] != transfer_id:
            raise TusError(403, "the token is for another transfer")
        transfer = await self._db.read(load_transfer, transfer_id)
        if transfer is None or transfer.state not in ("open", "completed", "registered"):
            raise TusError(404, "no such transfer (it may have been aborted)")
        return transfer

    # -- creation ----------------------------------------------------------------

    async def create(self, transfer: Transfer, creation: Creation) -> Answer:
        if creation.concat == "final":
            return await self._final(transfer, creation)
        if creation.concat != "partial":
            raise TusError(400, "this receiver takes partial uploads (Upload-Concat: partial) and "
                                "their final concatenation only")
        if transfer.state != "open":
            raise TusError(404, f"the transfer is {transfer.state}; nothing more can be written")
        record, md5s = self._partial_plan(transfer, creation)
        existing = await self._db.run(self._add, record, md5s)
        if existing != record:
            raise TusError(409, f"a partial upload for part {record.first} exists with another range")
        self.log.info("transfer {tid}: partial upload of parts {first}-{last} ({length} bytes)",
                      tid=transfer.id, first=record.first, last=record.last, length=record.length)
        return Answer(201, {"Location": self.location(transfer.id, record.first)})

    def _add(self, conn: Any, record: PartialRecord, md5s: dict[int, str]) -> PartialRecord:
        existing = store.add_partial(conn, record, self._reactor.seconds())
        if existing == record:
            remember_digests(conn, record.transfer_id, sorted(md5s.items()))
        return existing

    def _partial_plan(self, t: Transfer, creation: Creation) -> tuple[PartialRecord, dict[int, str]]:
        try:
            first = int(creation.metadata.get("first", b"").decode("ascii"))
            last = int(creation.metadata.get("last", b"").decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise TusError(400, "Upload-Metadata must name the partial's parts: first and last "
                                "(decimal part numbers)") from None
        if not 1 <= first <= last <= t.part_count:
            raise TusError(400, f"parts {first}-{last} are not within this transfer's 1-{t.part_count}")
        length = sum(t.part_length(n) for n in range(first, last + 1))
        if creation.length != length:
            raise TusError(400, f"parts {first}-{last} hold {length} bytes: Upload-Length must say so")
        raw = creation.metadata.get("md5s", b"")
        if len(raw) != 16 * (last - first + 1):
            raise TusError(400, "Upload-Metadata md5s must be the parts' MD5 digests, 16 bytes each")
        md5s = {first + i: base64.b64encode(raw[16 * i:16 * i + 16]).decode() for i in range(last - first + 1)}
        return PartialRecord(t.id, first, last, length), md5s

    async def _final(self, t: Transfer, creation: Creation) -> Answer:
        prefix = f"/{t.id}/"
        firsts = []
        for url in creation.parts:
            path = url.split("?", 1)[0]
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if f"{prefix}{name}" not in path or not name.isdigit():
                raise TusError(400, f"{url[:100]!r} is not a partial upload of this transfer")
            firsts.append(int(name))
        if t.state in ("completed", "registered"):
            return Answer(201, {"Location": self.location(t.id, "final"),
                                "Upload-Length": str(t.size), "Upload-Offset": str(t.size)})
        expected = 1
        for first in firsts:
            record = await self._db.read(store.partial, t.id, first)
            if record is None or record.first != expected:
                raise TusError(400, f"the partial uploads must cover parts 1-{t.part_count} in order; "
                                    f"part {expected} is not where it should be")
            expected = record.last + 1
        if expected != t.part_count + 1:
            raise TusError(400, f"the partial uploads end at part {expected - 1} of {t.part_count}")
        try:
            held = await self._objects.list_parts(t.object_key, t.upload_id)
        except NoSuchUpload:
            raise TusError(404, "S3 no longer has this transfer's multipart upload") from None
        except ObjectStoreError as e:
            raise TusError(503, f"S3 could not be asked: {e}", {"Retry-After": "1"}) from None
        missing = missing_parts(t, held, await self._db.read(digests_of, t.id))
        if missing:
            raise TusError(400, f"{len(missing)} parts are not complete yet (the first: {missing[0]})")
        await self._db.run(self._finish, t)
        for key in [k for k in self._partials if k[0] == t.id]:
            del self._partials[key]
        self.log.info("transfer {tid}: final upload of {count} partial uploads; completing",
                      tid=t.id, count=len(firsts))
        return Answer(201, {"Location": self.location(t.id, "final"),
                            "Upload-Length": str(t.size), "Upload-Offset": str(t.size)})

    def location(self, transfer_id: str, name: int | str) -> str:
        return f"/transfers/{transfer_id}/{name}"

    # -- head, patch, delete -----------------------------------------------------

    async def head(self, transfer: Transfer, first: int,
                   abort_writer: Callable[[object], None] = lambda writer: None) -> Answer:
        partial = await self._partial(transfer, first)
        # An edge writes each partial upload over one request at a time: a
        # writer still here when it asks is a connection it gave up on.
        # Its bytes are taken first, so that the offset does not move after
        # this answer (the next PATCH would meet a 409, its body wasted).
        await self._take_over(partial, abort_writer, limit=False)
        if partial.writer is None and len(partial.held) == partial.part_length() and partial.held:
            # A complete part whose write failed: write it now, or forget it.
            try:
                await self._store_held(partial)
            except (TusError, PartMismatch):
                partial.drop_held()
        return Answer(200, self._state(partial))

    def _state(self, partial: PartialUpload) -> dict[str, str]:
        return {"Upload-Offset": str(partial.offset), "Upload-Length": str(partial.length),
                "Upload-Concat": "partial", "Cache-Control": "no-store"}

    async def patch(self, transfer: Transfer, first: int, offset: int, body: RequestBody,
                    checksum: Checksum | None, abort_writer: Callable[[object], None], writer: object) -> Answer:
        if transfer.state != "open":
            raise TusError(404, f"the transfer is {transfer.state}; nothing more can be written")
        partial = await self._partial(transfer, first)
        await self._take_over(partial, abort_writer)
        if partial.writer is not None:
            raise TusError(423, "another request is writing to this upload", {"Retry-After": "1"})
        partial.writer = writer
        self.log.debug("transfer {tid} part {first}: PATCH at {offset}", tid=transfer.id, first=first, offset=offset)
        released: Deferred[None] = Deferred()
        partial.released = released
        try:
            return await self._write(partial, offset, body, checksum)
        finally:
            partial.writer = None
            partial.released = None
            partial.idle_since = self._reactor.seconds()
            released.callback(None)

    async def _take_over(self, partial: PartialUpload, abort_writer: Callable[[object], None],
                         limit: bool = True) -> None:
        """A newer request wins: the old connection (often dead) is closed first."""
        if partial.writer is not None and partial.released is not None:
            released = partial.released
            abort_writer(partial.writer)
            await released
        if limit and not partial.held and partial.writer is None:
            holding = [p for p in self._partials.values() if p.held]
            if len(holding) >= self._settings.max_streams:
                idle = sorted((p for p in holding if p.writer is None), key=lambda p: p.idle_since)
                if not idle:
                    raise TusError(503, "the receiver is at its limit of streams; try again shortly",
                                   {"Retry-After": "1"})
                idle[0].drop_held()

    async def _write(self, partial: PartialUpload, offset: int, body: RequestBody,
                     checksum: Checksum | None) -> Answer:
        headers = self._state(partial)
        if offset != partial.offset:
            raise TusError(409, f"Upload-Offset {offset} does not match the upload's offset {partial.offset}",
                           headers)
        room = partial.length - partial.offset
        if body.expected is not None and body.expected > room:
            raise TusError(413, f"the body would go past the upload's length ({room} bytes left)", headers)
        if checksum is not None:
            await self._verified(partial, body, checksum, room)
        else:
            try:
                while chunks := await body.read():
                    for chunk in chunks:
                        await self._feed(partial, chunk)
            except BodyInterrupted:
                self.log.info("transfer {tid} part {part}: the connection dropped; {offset} bytes kept",
                              tid=partial.transfer.id, part=partial.part, offset=partial.offset)
        self.log.debug("transfer {tid} part {first}: PATCH ends at {offset}", tid=partial.transfer.id,
                       first=partial.record.first, offset=partial.offset)
        return Answer(204, {"Upload-Offset": str(partial.offset)})

    async def _verified(self, partial: PartialUpload, body: RequestBody, checksum: Checksum, room: int) -> None:
        """A checksummed body is held whole, verified, and only then taken."""
        if body.expected is None or body.expected > self._settings.checksum_limit:
            raise TusError(413, f"a checksummed body needs a Content-Length of at most "
                                f"{self._settings.checksum_limit} bytes", self._state(partial))
        data = bytearray()
        try:
            while chunks := await body.read():
                for chunk in chunks:
                    data += chunk
        except BodyInterrupted:
            return  # it cannot be verified: nothing of it is kept
        hasher = checksum.hasher()
        hasher.update(data)
        if hasher.digest() != checksum.digest:
            raise TusError(CHECKSUM_MISMATCH, "the body does not match Upload-Checksum; it was discarded",
                           self._state(partial))
        await self._feed(partial, bytes(data))

    async def _feed(self, partial: PartialUpload, data: bytes) -> None:
        self.bytes_received += len(data)
        while data:
            if partial.complete:
                raise TusError(413, "the body goes past the upload's length", self._state(partial))
            data, full = partial.take(data)
            if full:
                await self._store_held(partial)

    async def _store_held(self, partial: PartialUpload) -> None:
        t = partial.transfer
        try:
            md5 = partial.check_held()
        except PartMismatch as e:
            raise TusError(CHECKSUM_MISMATCH, f"{e}; its bytes were discarded, send them again",
                           self._state(partial)) from None
        number = partial.part
        for attempt in range(1, self._settings.part_attempts + 1):
            try:
                await self._objects.upload_part(t.object_key, t.upload_id, number, bytes(partial.held), md5)
                break
            except NoSuchUpload:
                raise TusError(404, "S3 no longer has this transfer's multipart upload") from None
            except ObjectStoreError as e:
                if not e.transient or attempt == self._settings.part_attempts:
                    self.log.warn("transfer {tid}: S3 refused part {number}: {error}", tid=t.id,
                                  number=number, error=str(e))
                    raise TusError(503, "S3 did not take the part; try again", {"Retry-After": "2"}) from None
                await deferLater(self._reactor, min(8.0, 0.5 * 2 ** attempt) * self._rng.uniform(0.5, 1))
        partial.stored_part()
        self.parts_stored += 1

    async def delete(self, transfer: Transfer, first: int, abort_writer: Callable[[object], None]) -> Answer:
        partial = await self._partial(transfer, first)
        await self._take_over(partial, abort_writer)
        partial.drop_held()
        self._partials.pop((transfer.id, first), None)
        await self._db.run(store.remove_partial, transfer.id, first)
        return Answer(204)

    async def _partial(self, transfer: Transfer, first: int) -> PartialUpload:
        key = (transfer.id, first)
        partial = self._partials.get(key)
        if partial is not None:
            partial.transfer = transfer
            return partial
        record = await self._db.read(store.partial, transfer.id, first)
        if record is None:
            raise TusError(404, "no such partial upload")
        digests = await self._db.read(digests_of, transfer.id)
        partial = PartialUpload(transfer, record, digests)
        try:
            parts = await self._objects.list_parts(transfer.object_key, transfer.upload_id)
        except NoSuchUpload:
            raise TusError(404, "S3 no longer has this transfer's multipart upload") from None
        except ObjectStoreError as e:
            raise TusError(503, f"S3 could not be asked: {e}", {"Retry-After": "1"}) from None
        # Another request may have loaded it meanwhile: keep the first.
        partial = self._partials.setdefault(key, partial)
        if partial.writer is None and not partial.held and partial.stored == 0:
            partial.catch_up(parts)
        return partial

    def forget(self, transfer_id: str) -> None:
        """The transfer is over (registered or aborted): drop what is held."""
        for key in [k for k in self._partials if k[0] == transfer_id]:
            self._partials.pop(key).drop_held()


def parse_first(name: str) -> int:
    """A partial upload's name (its first part number)."""
    if not name.isdigit() or len(name) > 5:
        raise TusError(404, "no such partial upload")
    return int(name)

