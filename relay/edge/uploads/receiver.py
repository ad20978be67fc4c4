"""
Receiving one request body into one upload's spool file.

The body arrives on the reactor thread (a L{RequestBody}); the spool is
written in batches on a thread pool, one batch at a time, while the next
batch accumulates (the transport pauses when it is too big).  Memory per
upload is therefore two batches plus the spool writer's segment buffers,
whatever the size of the upload.

A body with C{Upload-Checksum} is held aside (in memory up to a small
limit, beyond it in an encrypted scratch spool file) until the checksum has
been verified on the plaintext; a mismatch discards it whole (460).  Without
a checksum every byte that arrived is kept, also when the connection drops.
Before a reply reports an offset, the spool is flushed and fsync'd.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger

from relay.edge.uploads.locks import Lease
from relay.edge.uploads.spool import Spool, SpoolError, SpoolFull, SpoolWriter
from relay.threads import Threads
from relay.tus.protocol import CHECKSUM_MISMATCH, Checksum, TusError
from relay.tus.streaming import BodyInterrupted, RequestBody

log = Logger()

SPACE_MESSAGE = "the edge is short of disk space; the upload keeps what arrived, retry later"


class LowDisk(Exception):
    """Writing would eat into the free-disk reserve."""


@dataclass(frozen=True)
class Received:
    """
    How one request body ended.

    @ivar offset: the upload's durable offset now.
    @ivar error: the refusal to report (460, 413, 507), or C{None}.
    @ivar interrupted: the connection dropped before the body ended.
    """

    offset: int
    error: TusError | None = None
    interrupted: bool = False


class _HeldChunk:
    """
    The bytes of a checksummed request, held until they are verified: in
    memory up to C{memory_limit}, then in an encrypted scratch spool file.
    All methods block (they run on the spool threads).
    """

    def __init__(self, spool: Spool, upload_id: str, checksum: Checksum, memory_limit: int):
        self._spool = spool
        self._scratch_id = f"{upload_id}-x{secrets.token_hex(4)}"
        self._hasher = checksum.hasher()
        self._expected = checksum.digest
        self._memory: list[bytes] = []
        self._in_memory = 0
        self._limit = memory_limit
        self._scratch: SpoolWriter | None = None
        self.size = 0

    def add(self, batch: list[bytes], reserve: int) -> None:
        for chunk in batch:
            self._hasher.update(chunk)
        size = sum(map(len, batch))
        self.size += size
        if self._scratch is None and self._in_memory + size <= self._limit:
            self._memory.extend(batch)
            self._in_memory += size
            return
        _check_space(self._spool, size, reserve)
        if self._scratch is None:
            self._scratch = self._spool.create(self._scratch_id)
            for chunk in self._memory:
                self._scratch.write(chunk)
            self._memory, self._in_memory = [], 0
        for chunk in batch:
            self._scratch.write(chunk)

    def matches(self) -> bool:
        return bool(self._hasher.digest() == self._expected)

    def drain_into(self, writer: SpoolWriter, reserve: int) -> None:
        _check_space(self._spool, self.size if self._scratch is not None else 0, reserve)
        for chunk in self._memory:
            writer.write(chunk)
        if self._scratch is not None:
            self._scratch.flush(fsync=False)
            with self._spool.reader(self._scratch_id) as reader:
                for block in reader.blocks(0, reader.length):
                    writer.write(block)
        self.discard()

    def discard(self) -> None:
        self._memory, self._in_memory = [], 0
        if self._scratch is not None:
            try:
                self._scratch.close()
            except (OSError, SpoolError):
                pass
            self._scratch = None
            self._spool.erase(self._scratch_id)


def _check_space(spool: Spool, size: int, reserve: int) -> None:
    if size and spool.free_bytes() - size < reserve:
        raise LowDisk()


def _write_batch(spool: Spool, writer: SpoolWriter, batch: list[bytes], reserve: int) -> int:
    _check_space(spool, sum(map(len, batch)), reserve)
    for chunk in batch:
        writer.write(chunk)
    return writer.offset


class BodyReceiver:
    """
    Receives one request body into an open spool writer.

    @param limit: the offset the body may not go past (the upload's length,
        or for a deferred length the size and quota limits).
    @param limit_error: what to report when the body goes past it.
    @param progressed: told the offset accepted so far after each batch (not
        necessarily durable yet; for progress reports).
    """

    def __init__(
        self,
        threads: Threads,
        spool: Spool,
        writer: SpoolWriter,
        lease: Lease,
        limit: int,
        limit_error: TusError,
        reserve: int,
        checksum_memory: int,
        progressed: Callable[[int], object] | None = None,
    ) -> None:
        self._threads = threads
        self._spool = spool
        self._writer = writer
        self._lease = lease
        self._limit = limit
        self._limit_error = limit_error
        self._reserve = reserve
        self._checksum_memory = checksum_memory
        self._progressed = progressed

    async def receive(self, body: RequestBody, checksum: Checksum | None) -> Received:
        """
        Read the body to its end (or the connection's), keep what may be
        kept, flush and fsync; return the durable offset and any refusal.
        """
        writer, run = self._writer, self._threads.run
        start = writer.offset
        held = (
            _HeldChunk(self._spool, writer.file_id, checksum, self._checksum_memory)
            if checksum is not None
            else None
        )
        error: TusError | None = None
        interrupted = False
        accepted = start
        try:
            while True:
                try:
                    batch = await body.read()
                except BodyInterrupted:
                    interrupted = True
                    break
                if not batch:
                    break
                size = sum(map(len, batch))
                if accepted + size > self._limit:
                    batch = _truncate(batch, self._limit - accepted)
                    size = self._limit - accepted
                    error = self._limit_error
                if held is not None:
                    await run(held.add, batch, self._reserve)
                else:
                    await run(_write_batch, self._spool, writer, batch, self._reserve)
                accepted += size
                self._lease.touch(accepted)
                if self._progressed is not None:
                    self._progressed(accepted)
                if error is not None:
                    body.discard()
                    break
            if held is not None:
                if interrupted or error is not None:
                    await run(held.discard)
                elif not held.matches():
                    await run(held.discard)
                    error = TusError(
                        CHECKSUM_MISMATCH,
                        f"checksum mismatch: the {checksum and checksum.algorithm} of the "
                        "body differs from Upload-Checksum; the body was discarded",
                    )
                else:
                    await run(held.drain_into, writer, self._reserve)
        except (SpoolFull, LowDisk):
            body.discard()
            if held is not None:
                await run(held.discard)
            error = TusError(507, SPACE_MESSAGE)
        offset = await self._make_durable()
        return Received(offset, error, interrupted)

    async def _make_durable(self) -> int:
        try:
            return await self._threads.run(self._writer.flush, True)
        except (OSError, SpoolError):
            log.failure("flushing upload {upload_id} failed", upload_id=self._writer.file_id)
            # The spool keeps what it made durable before; recovery says how much.
            return await self._threads.run(_recovered_length, self._spool, self._writer)


def _recovered_length(spool: Spool, writer: SpoolWriter) -> int:
    try:
        writer.close()
    except (OSError, SpoolError):
        pass
    return spool.length(writer.file_id)


def _truncate(batch: list[bytes], room: int) -> list[bytes]:
    kept: list[bytes] = []
    for chunk in batch:
        if room <= 0:
            break
        kept.append(chunk[:room])
        room -= len(kept[-1])
    return kept
