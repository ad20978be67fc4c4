"""
The encrypted spool: where uploads wait, encrypted, until S3 has them.

Each spool file is three files in one directory: C{<id>.key} (the per-file
key, wrapped by the master key), C{<id>.data} (a header, then AES-256-GCM
segments in the STREAM construction) and C{<id>.tail} (two alternating
encrypted state records holding the not-yet-full last segment). Plaintext
never reaches the disk. The format, crash recovery and crypto-erase are
described in docs/spool-format.md.

File I/O here is synchronous and sized (at most one segment per call to the
OS); callers on the reactor thread may run it in a thread pool.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType

from relay.crypto import (
    KEY_SIZE,
    MAX_SEGMENTS,
    NONCE_PREFIX_SIZE,
    RECORD_NONCE_SIZE,
    TAG_SIZE,
    DecryptionError,
    SegmentCipher,
    derive_key,
    fsync_directory,
    open_record,
    seal_record,
    unwrap_key,
    wrap_key,
)

DEFAULT_SEGMENT_SIZE = 1 << 20
MIN_SEGMENT_SIZE = 64
MAX_SEGMENT_SIZE = 8 << 20  # segments must divide S3 parts (multiples of 8 MiB)
MAX_GENERATIONS = 256

SEGMENT_INFO = b"relay spool v1"
TAIL_INFO = b"relay spool v1 tail"

_MAGIC = b"RLYSPOOL"
_VERSION = 1
_HEADER = struct.Struct(">8sBI7sB")  # magic, version, segment size, prefix, id length
_KEY_MAGIC = b"RLYK\x01"
_SLOT_MAGIC = b"RLYT"
_SLOT = struct.Struct(">4sQBIIIH")  # magic, seq, flags, full, synced, tail_len, n_gen
_GENERATION = struct.Struct(">I7s")  # first segment, nonce prefix
_FINAL = 1
_CLEAN = 2
_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class SpoolError(Exception):
    """Base class for spool failures."""


class SpoolFileGone(SpoolError):
    """The file does not exist: never created, or erased (its key is destroyed)."""


class SpoolExists(SpoolError):
    """A file with this id already exists."""


class SpoolCorrupt(SpoolError):
    """Stored data failed authentication or is truncated; no plaintext is returned."""


class SpoolFinalized(SpoolError):
    """The file is complete and accepts no more data."""


class SpoolFull(SpoolError):
    """
    The disk is full. Everything made durable before stays intact; the
    writer's C{offset} (also in C{offset} here) counts the bytes accepted so
    far, and a later C{flush()} may still make them durable.
    """

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True)
class SpoolStat:
    """What the disk holds for one file: its recoverable length and whether it is complete."""

    length: int
    finalized: bool


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    """pwrite everything (a seam: tests replace it to inject failures)."""
    view = memoryview(data)
    while view:
        try:
            written = os.pwrite(fd, view, offset)
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise SpoolFull(f"spool disk full: {e.strerror}") from e
            raise
        view = view[written:]
        offset += written


def _fdatasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise SpoolFull(f"spool disk full: {e.strerror}") from e
        raise


@dataclass
class _State:
    """One decoded state record, or the state recovered from the disk."""

    seq: int
    slot: int
    flags: int
    full: int  # full segments
    synced: int  # full segments fsynced before this record was written
    tail_len: int  # bytes in the tail, or in the final segment when final
    generations: list[tuple[int, bytes]]
    tail: bytes = b""
    newest_seq: int = 0  # highest sequence number on disk, valid or not chosen

    @property
    def final(self) -> bool:
        return bool(self.flags & _FINAL)


def _prefix_for(generations: list[tuple[int, bytes]], index: int) -> bytes:
    for start, prefix in reversed(generations):
        if start <= index:
            return prefix
    raise SpoolCorrupt("generation table does not start at segment 0")


class _SpoolFile:
    """The open files and keys of one spool file; shared by writers and readers."""

    def __init__(self, file_id: str, data_fd: int, tail_fd: int, file_key: bytes) -> None:
        self.file_id = file_id
        self.data_fd = data_fd
        self.tail_fd = tail_fd
        raw = os.pread(data_fd, _HEADER.size + 255, 0)
        magic, version, size, prefix, id_len = _HEADER.unpack_from(raw.ljust(_HEADER.size))
        if len(raw) < _HEADER.size + id_len:
            raise SpoolCorrupt(f"spool file {file_id}: header truncated")
        if magic != _MAGIC or version != _VERSION:
            raise SpoolCorrupt(f"spool file {file_id}: unknown header {magic!r} v{version}")
        self.header = raw[: _HEADER.size + id_len]
        if self.header[_HEADER.size :] != file_id.encode():
            raise SpoolCorrupt(f"spool file {file_id}: header names another file")
        _check_segment_size(size)
        self.segment_size = size
        self.prefix = prefix
        self.cipher = SegmentCipher(derive_key(file_key, prefix, SEGMENT_INFO), self.header)
        self.tail_key = derive_key(file_key, prefix, TAIL_INFO)
        self.slot_size = (
            _SLOT.size + MAX_GENERATIONS * _GENERATION.size + RECORD_NONCE_SIZE + size + TAG_SIZE
        )

    def record_size(self, tail_len: int) -> int:
        """The most a state record holding C{tail_len} bytes of tail takes."""
        return _SLOT.size + MAX_GENERATIONS * _GENERATION.size + RECORD_NONCE_SIZE + tail_len + TAG_SIZE

    def reserve(self, tail_len: int) -> None:
        """
        Allocate both state slots for records of up to C{tail_len} bytes of
        tail, so that a flush of them still fits when the disk fills up.
        The rest of each slot stays a hole: a file's tail costs disk in
        proportion to what it holds.
        """
        size = self.record_size(tail_len)
        for slot in (0, 1):
            try:
                os.posix_fallocate(self.tail_fd, slot * self.slot_size, size)
            except OSError as e:
                if e.errno in _NO_SPACE:
                    raise SpoolFull(f"spool disk full: {e.strerror}") from e
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise

    def __del__(self) -> None:
        # Dropped without close(): like a crash, nothing more is written.
        if getattr(self, "data_fd", -1) >= 0:
            self.close()

    def close(self) -> None:
        for fd in (self.data_fd, self.tail_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.data_fd = self.tail_fd = -1

    def position(self, index: int) -> int:
        return len(self.header) + index * (self.segment_size + TAG_SIZE)

    def open_segment(
        self,
        generations: list[tuple[int, bytes]],
        index: int,
        last: bool,
        length: int,
        buf: bytearray,
    ) -> bytes:
        """Read and verify segment C{index} of C{length} plaintext bytes."""
        want = length + TAG_SIZE
        view = memoryview(buf)[:want]
        got = os.preadv(self.data_fd, [view], self.position(index))
        if got != want:
            raise SpoolCorrupt(f"spool file {self.file_id}: segment {index} is truncated")
        try:
            return self.cipher.open(_prefix_for(generations, index), index, last, view)
        except DecryptionError as e:
            raise SpoolCorrupt(f"spool file {self.file_id}: {e}") from None

    def encode_state(
        self,
        seq: int,
        flags: int,
        full: int,
        synced: int,
        tail: memoryview | bytes,
        tail_len: int,
        generations: list[tuple[int, bytes]],
    ) -> bytes:
        meta = _SLOT.pack(_SLOT_MAGIC, seq, flags, full, synced, tail_len, len(generations))
        meta += b"".join(_GENERATION.pack(start, prefix) for start, prefix in generations)
        return meta + seal_record(self.tail_key, tail, self.header + meta)

    def read_state(self, slot: int) -> _State | None:
        """Decode one state record; None when it is absent, torn or forged."""
        raw = os.pread(self.tail_fd, self.slot_size, slot * self.slot_size)
        if len(raw) < _SLOT.size:
            return None
        magic, seq, flags, full, synced, tail_len, n_gen = _SLOT.unpack_from(raw)
        meta_len = _SLOT.size + n_gen * _GENERATION.size
        body_len = (0 if flags & _FINAL else tail_len) + RECORD_NONCE_SIZE + TAG_SIZE
        if (
            magic != _SLOT_MAGIC
            or not 0 < n_gen <= MAX_GENERATIONS
            or tail_len > self.segment_size
            or synced > full
            or len(raw) < meta_len + body_len
        ):
            return None
        meta = raw[:meta_len]
        try:
            tail = open_record(
                self.tail_key, raw[meta_len : meta_len + body_len], self.header + meta
            )
        except DecryptionError:
            return None
        generations = [
            _GENERATION.unpack_from(meta, _SLOT.size + i * _GENERATION.size) for i in range(n_gen)
        ]
        if generations[0] != (0, self.prefix):
            return None
        return _State(seq, slot, flags, full, synced, tail_len, generations, tail)

    def recover(self) -> _State:
        """The longest state the disk proves: see "Crash recovery" in docs/spool-format.md."""
        found = [s for s in (self.read_state(0), self.read_state(1)) if s is not None]
        if not found:
            raise SpoolCorrupt(f"spool file {self.file_id}: no valid state record")
        found.sort(key=lambda s: s.seq, reverse=True)
        size = os.fstat(self.data_fd).st_size
        seg = self.segment_size
        buf = bytearray(seg + TAG_SIZE)
        for state in found:
            if state.final:
                if size != self.position(state.full) + state.tail_len + TAG_SIZE:
                    raise SpoolCorrupt(f"spool file {self.file_id}: complete file has wrong size")
                break
            if size < self.position(state.synced):
                raise SpoolCorrupt(f"spool file {self.file_id}: truncated below its durable length")
            try:
                for index in range(state.synced, state.full):
                    self.open_segment(state.generations, index, False, seg, buf)
            except SpoolCorrupt:
                continue  # written without fsync and lost: an older record holds
            break
        else:
            raise SpoolCorrupt(f"spool file {self.file_id}: no state record matches the data")
        state.newest_seq = found[0].seq
        if state.final:
            return state
        # Segments sealed after the last state record are kept if they verify.
        full = state.full
        while self.position(full + 1) <= size:
            try:
                self.open_segment(state.generations, full, False, seg, buf)
            except SpoolCorrupt:
                break
            full += 1
        if full > state.full:
            state = replace(state, full=full, tail=b"", tail_len=0, flags=0)
        rest = size - self.position(full)
        if TAG_SIZE <= rest < seg + TAG_SIZE:
            try:
                self.open_segment(state.generations, full, True, rest - TAG_SIZE, buf)
            except SpoolCorrupt:
                pass
            else:  # finalize() wrote the last segment but not its state record
                return replace(state, full=full, tail=b"", tail_len=rest - TAG_SIZE, flags=_FINAL)
        return state


def _check_segment_size(size: int) -> None:
    if not (MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and size & (size - 1) == 0):
        raise SpoolCorrupt(
            f"segment size {size} must be a power of two from {MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE}"
        )


class SpoolWriter:
    """
    Appends to one spool file.

    C{write} keeps the trailing, not-yet-full segment in memory and seals each
    full segment to disk. C{flush} makes everything written so far
    recoverable: the tail goes to an encrypted state record. C{finalize}
    seals the last segment. Not thread-safe: one writer per file at a time.
    Obtained from L{Spool.create} or L{Spool.open_writer}.
    """

    def __init__(
        self, f: _SpoolFile, state: _State, *, rotate: bool, marked: bool, reserved: int = -1
    ) -> None:
        self._f = f
        seg = f.segment_size
        self._seg = seg
        self._tail = bytearray(seg)
        self._tail_view = memoryview(self._tail)
        self._tail_len = len(state.tail)
        self._tail[: self._tail_len] = state.tail
        self._out = memoryview(bytearray(seg + TAG_SIZE))
        self._full = state.full
        self._synced = state.full
        self._generations = list(state.generations)
        self._seq = max(state.seq, state.newest_seq)
        self._durable_slot = state.slot
        # Nonce-reuse guard: sealing under the current prefix needs a durable
        # record saying "not clean" first; after an unclean stop or a failed
        # write, a new prefix (generation) is used from the next segment on.
        self._marked = marked
        self._rotate = rotate
        self._failed_seal = False
        self._finalized = state.final
        self._final_recorded = state.final
        self._broken = False
        self._recorded: tuple[int, bool] | None = None
        # Tail bytes whose state records have their disk reserved (unknown
        # for an opened file: reserved again on its first write or flush).
        self._reserved = reserved

    @property
    def offset(self) -> int:
        """Bytes accepted so far (durable once C{flush(fsync=True)} returns)."""
        return self._full * self._seg + self._tail_len

    @property
    def file_id(self) -> str:
        return self._f.file_id

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append C{data}; returns the new offset. Raises L{SpoolFull} when the disk is full."""
        self._check_open()
        view = memoryview(data).cast("B")
        seg, end, pos = self._seg, len(view), 0
        try:
            while pos < end:
                if self._tail_len == seg:
                    self._seal_tail()
                if self._tail_len == 0 and end - pos >= seg:
                    self._seal(view[pos : pos + seg])  # straight from the caller's buffer
                    pos += seg
                    continue
                take = min(seg - self._tail_len, end - pos)
                self._reserve(self._tail_len + take)
                self._tail[self._tail_len : self._tail_len + take] = view[pos : pos + take]
                self._tail_len += take
                pos += take
            if self._tail_len == seg:
                self._seal_tail()
        except SpoolFull as e:
            e.offset = self.offset
            raise
        return self.offset

    def flush(self, fsync: bool = True) -> int:
        """
        Make every accepted byte recoverable: after a process kill when
        C{fsync} is false, after a power loss too when it is true. Returns the offset.
        """
        if self._finalized and not self._broken:
            return self.offset
        self._check_open()
        if self._recorded is not None and self._recorded[0] == self.offset:
            if self._recorded[1] or not fsync:
                return self.offset
        try:
            if fsync:
                self._sync_data()
            self._write_state(0, fsync)
        except SpoolFull as e:
            e.offset = self.offset
            raise
        return self.offset

    def finalize(self) -> int:
        """Seal the last segment, make the file durable and complete; returns its length."""
        if self._broken or self._f.data_fd < 0:
            raise SpoolError(f"spool writer for {self.file_id} is closed or failed; reopen it")
        try:
            if not self._finalized:
                self._seal_final()
            if not self._final_recorded:
                self._write_state(_FINAL, True)
                self._final_recorded = True
        except SpoolFull as e:
            e.offset = self.offset
            raise
        return self.offset

    def close(self) -> None:
        """Flush durably (marking the file cleanly closed) and release the files."""
        if self._f.data_fd < 0:
            return
        try:
            if not (self._finalized or self._broken):
                self._sync_data()
                # "Clean" promises no segment past the recorded ones was ever
                # sealed under the current prefix: not so after a failed
                # write, or before the rotation an unclean start asked for.
                clean = not (self._failed_seal or self._rotate)
                self._write_state(_CLEAN if clean else 0, True)
        finally:
            self._f.close()

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._f.data_fd < 0:
            raise SpoolError(f"spool writer for {self.file_id} is closed")
        if self._broken:
            raise SpoolError(f"spool writer for {self.file_id} failed to sync; reopen it")
        if self._finalized:
            raise SpoolFinalized(f"spool file {self.file_id} is complete")

    def _prefix(self) -> bytes:
        return self._generations[-1][1]

    def _prepare_seal(self) -> None:
        """Before a segment is sealed, make sure no earlier seal can share its nonce."""
        if self._failed_seal:
            self._rotate, self._failed_seal = True, False
        if self._marked and not self._rotate:
            return
        generations = self._generations
        if self._rotate:
            if len(generations) >= MAX_GENERATIONS:
                raise SpoolError(f"spool file {self.file_id}: too many unclean restarts")
            used = {prefix for _, prefix in generations}
            prefix = secrets.token_bytes(NONCE_PREFIX_SIZE)
            while prefix in used:
                prefix = secrets.token_bytes(NONCE_PREFIX_SIZE)
            generations = [*generations, (self._full, prefix)]
        # Synced first: this record is durable, so all it claims must be.
        self._sync_data()
        self._write_state(0, True, generations)
        self._generations = generations
        self._marked, self._rotate = True, False

    def _seal(self, plaintext: memoryview) -> None:
        if self._full + 1 >= MAX_SEGMENTS:
            raise SpoolError(f"spool file {self.file_id} is at its maximum size")
        self._prepare_seal()
        self._f.cipher.seal_into(self._prefix(), self._full, False, plaintext, self._out)
        try:
            _pwrite_all(self._f.data_fd, self._out, self._f.position(self._full))
        except (OSError, SpoolFull):
            self._failed_seal = True  # a torn segment may now sit on disk
            raise
        self._full += 1

    def _seal_final(self) -> None:
        if self._tail_len == self._seg:
            self._seal_tail()
        self._prepare_seal()
        length = self._tail_len
        out = self._out[: length + TAG_SIZE]
        self._f.cipher.seal_into(self._prefix(), self._full, True, self._tail_view[:length], out)
        end = self._f.position(self._full) + len(out)
        try:
            _pwrite_all(self._f.data_fd, out, self._f.position(self._full))
            os.ftruncate(self._f.data_fd, end)  # nothing may follow the final segment
        except (OSError, SpoolFull):
            self._failed_seal = True
            raise
        self._sync_data(force=True)
        self._finalized = True

    def _seal_tail(self) -> None:
        self._seal(self._tail_view[: self._seg])
        self._tail_len = 0

    def _sync_data(self, force: bool = False) -> None:
        if self._synced == self._full and not force:
            return
        try:
            _fdatasync(self._f.data_fd)
        except (OSError, SpoolFull):
            self._broken = True  # the kernel may have dropped the dirty pages
            raise
        self._synced = self._full

    def _reserve(self, tail_len: int) -> None:
        """Reserve state records for C{tail_len} bytes of tail, doubling."""
        if tail_len <= self._reserved:
            return
        want = min(self._seg, max(tail_len, 2 * self._reserved, 4096))
        self._f.reserve(want)
        self._reserved = want

    def _write_state(
        self, flags: int, fsync: bool, generations: list[tuple[int, bytes]] | None = None
    ) -> None:
        if not flags & _FINAL:
            self._reserve(self._tail_len)
        # Never overwrite the last durable record: a torn write must leave it.
        slot = 1 - self._durable_slot
        final = bool(flags & _FINAL)
        tail = b"" if final else self._tail_view[: self._tail_len]
        record = self._f.encode_state(
            self._seq + 1,
            flags,
            self._full,
            self._synced,
            tail,
            self._tail_len,
            self._generations if generations is None else generations,
        )
        _pwrite_all(self._f.tail_fd, record, slot * self._f.slot_size)
        self._seq += 1
        if fsync:
            try:
                _fdatasync(self._f.tail_fd)
            except (OSError, SpoolFull):
                self._broken = True
                raise
            self._durable_slot = slot
        self._recorded = (self.offset, fsync)


class SpoolReader:
    """
    Reads one spool file as it is on disk (complete, or up to its last flush).
    Every segment is verified before any of its bytes are returned.
    C{length}, C{finalized} and C{segment_size} describe that snapshot.
    """

    def __init__(self, f: _SpoolFile, state: _State) -> None:
        self._f = f
        self._state = state
        self._buf = bytearray(f.segment_size + TAG_SIZE)
        self.segment_size = f.segment_size
        self.length = state.full * f.segment_size + state.tail_len
        self.finalized = state.final

    def read(self, offset: int, size: int) -> bytes:
        """Return exactly C{size} bytes at C{offset}; the range must lie within the file."""
        return b"".join(self.blocks(offset, size))

    def blocks(self, offset: int, size: int) -> Iterator[bytes]:
        """Yield the bytes of [offset, offset+size) in pieces of at most one segment."""
        if offset < 0 or size < 0 or offset + size > self.length:
            raise ValueError(f"range {offset}+{size} is outside 0..{self.length}")
        seg = self.segment_size
        end = offset + size
        while offset < end:
            index, skip = divmod(offset, seg)
            plaintext = self._segment(index)
            take = min(len(plaintext) - skip, end - offset)
            yield plaintext if take == len(plaintext) else plaintext[skip : skip + take]
            offset += take

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _segment(self, index: int) -> bytes:
        state, f = self._state, self._f
        if f.data_fd < 0:
            raise SpoolError(f"spool reader for {f.file_id} is closed")
        if index < state.full:
            return f.open_segment(state.generations, index, False, f.segment_size, self._buf)
        if state.final:
            return f.open_segment(state.generations, index, True, state.tail_len, self._buf)
        return state.tail


class Spool:
    """
    A directory of encrypted spool files, each named by an upload id.

    C{master_key} (32 bytes, see L{relay.crypto.load_or_create_master_key})
    wraps the per-file keys. C{segment_size} applies to files created from
    now on; each file records its own.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        master_key: bytes,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        if len(master_key) != KEY_SIZE:
            raise ValueError(f"master key must be {KEY_SIZE} bytes")
        try:
            _check_segment_size(segment_size)
        except SpoolCorrupt as e:
            raise ValueError(str(e)) from None
        self.directory = Path(directory)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._master_key = master_key
        self.segment_size = segment_size

    def create(self, file_id: str) -> SpoolWriter:
        """Create an empty file, durably; raises L{SpoolExists}."""
        key_path = self._path(file_id, "key")
        if key_path.exists():
            raise SpoolExists(f"spool file {file_id} exists")
        file_key = secrets.token_bytes(KEY_SIZE)
        prefix = secrets.token_bytes(NONCE_PREFIX_SIZE)
        ident = file_id.encode()
        header = _HEADER.pack(_MAGIC, _VERSION, self.segment_size, prefix, len(ident)) + ident
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        data_fd = os.open(self._path(file_id, "data"), flags, 0o600)
        tail_fd = -1
        try:
            tail_fd = os.open(self._path(file_id, "tail"), flags, 0o600)
            _pwrite_all(data_fd, header, 0)
            f = _SpoolFile(file_id, data_fd, tail_fd, file_key)
            # Reserved as the tail grows (SpoolWriter.write), so that a flush
            # always fits when the disk fills up.
            f.reserve(0)
            state = _State(1, 0, 0, 0, 0, 0, [(0, prefix)])
            _pwrite_all(tail_fd, f.encode_state(1, 0, 0, 0, b"", 0, state.generations), 0)
            _fdatasync(data_fd)
            _fdatasync(tail_fd)
            fsync_directory(self.directory)
            self._write_key_record(file_id, file_key)
        except BaseException:
            for fd in (data_fd, tail_fd):
                if fd >= 0:
                    os.close(fd)
            self._remove_files(file_id)
            raise
        # The first record already says "not clean": sealing may start at once.
        return SpoolWriter(f, state, rotate=False, marked=True, reserved=0)

    def open_writer(self, file_id: str) -> SpoolWriter:
        """Resume appending after a restart; the offset is the recovered length."""
        f = self._open(file_id, writable=True)
        try:
            state = f.recover()
            if state.final:
                raise SpoolFinalized(f"spool file {file_id} is complete")
            # Drop anything torn past the recovered segments, and make what
            # recovery kept durable before new records refer to it.
            os.ftruncate(f.data_fd, f.position(state.full))
            _fdatasync(f.data_fd)
            _fdatasync(f.tail_fd)
        except BaseException:
            f.close()
            raise
        clean = bool(state.flags & _CLEAN) and state.seq == state.newest_seq
        return SpoolWriter(f, state, rotate=not clean, marked=False)

    def reader(self, file_id: str) -> SpoolReader:
        """Open a file for reading its recoverable contents."""
        f = self._open(file_id, writable=False)
        try:
            return SpoolReader(f, f.recover())
        except BaseException:
            f.close()
            raise

    def stat(self, file_id: str) -> SpoolStat:
        """Recoverable length of a file and whether it is complete."""
        with self.reader(file_id) as r:
            return SpoolStat(r.length, r.finalized)

    def length(self, file_id: str) -> int:
        """Recoverable length of a file (what a restarted writer would resume from)."""
        return self.stat(file_id).length

    def exists(self, file_id: str) -> bool:
        return self._path(file_id, "key").exists()

    def list_ids(self) -> list[str]:
        """Ids of all files whose key still exists, sorted."""
        return sorted(
            p.name[: -len(".key")]
            for p in self.directory.iterdir()
            if p.name.endswith(".key") and _FILE_ID.match(p.name[: -len(".key")])
        )

    def rewrap(self, new_master_key: bytes) -> int:
        """
        Wrap every file's key with C{new_master_key} instead (master key
        rotation; the data is not touched).  Each key record is replaced
        atomically and durably; a record that already opens with the new
        key is left alone, so an interrupted rotation can simply be run
        again.  Returns how many records were rewrapped.

        @raise SpoolCorrupt: a record opens with neither key.
        """
        if len(new_master_key) != KEY_SIZE:
            raise ValueError(f"master key must be {KEY_SIZE} bytes")
        done = 0
        for file_id in self.list_ids():
            path = self._path(file_id, "key")
            record = path.read_bytes()
            if not record.startswith(_KEY_MAGIC):
                raise SpoolCorrupt(f"spool file {file_id}: key record is not a key record")
            wrapped, context = record[len(_KEY_MAGIC) :], file_id.encode()
            try:
                unwrap_key(new_master_key, wrapped, context)
                continue  # rewrapped by an earlier run
            except DecryptionError:
                pass
            try:
                file_key = unwrap_key(self._master_key, wrapped, context)
            except DecryptionError:
                raise SpoolCorrupt(f"spool file {file_id}: key record opens with neither key") from None
            tmp = self._path(file_id, "key.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _pwrite_all(fd, _KEY_MAGIC + wrap_key(new_master_key, file_key, context), 0)
                _fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            done += 1
        fsync_directory(self.directory)
        return done

    def erase(self, file_id: str) -> bool:
        """
        Crypto-erase: destroy the key record durably, then remove the data.
        Returns whether a key was destroyed; erasing a missing file is not an error.
        """
        key_path = self._path(file_id, "key")
        try:
            key_path.unlink()
            destroyed = True
        except FileNotFoundError:
            destroyed = False
        fsync_directory(self.directory)
        self._remove_files(file_id)
        fsync_directory(self.directory)
        return destroyed

    def remove_orphans(self) -> list[str]:
        """
        Remove data left without a key by a crash during create or erase.
        Call at startup, before any writer is open.
        """
        keep = set(self.list_ids())
        removed = []
        for p in self.directory.iterdir():
            stem, _, ext = p.name.partition(".")
            if ext == "key.tmp" or (ext in ("data", "tail") and stem not in keep):
                p.unlink(missing_ok=True)
                removed.append(p.name)
        if removed:
            fsync_directory(self.directory)
        return sorted(removed)

    def free_bytes(self) -> int:
        """Bytes available to this process on the spool's filesystem."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def beside(self, directory: str | os.PathLike[str]) -> Spool:
        """Another spool directory under the same master key."""
        return Spool(directory, self._master_key, self.segment_size)

    def move(self, file_id: str, target: Spool) -> None:
        """
        Move a file into another spool directory under the same id and
        master key, by renaming (raises C{OSError}, e.g. across
        filesystems, and then leaves the file here).  The key record goes
        last: a crash midway leaves the target an orphan without a key
        (L{remove_orphans}) and this spool its file.
        """
        if target._master_key != self._master_key:
            raise ValueError("a spool file moves only between spools of one master key")
        if target.exists(file_id):
            raise SpoolExists(f"spool file {file_id} exists in {target.directory}")
        target._remove_files(file_id)  # an earlier attempt's orphans
        for ext in ("data", "tail"):
            os.link(self._path(file_id, ext), target._path(file_id, ext))
        fsync_directory(target.directory)
        os.rename(self._path(file_id, "key"), target._path(file_id, "key"))
        fsync_directory(target.directory)
        fsync_directory(self.directory)
        self._remove_files(file_id)

    def concatenate(self, target_id: str, source_ids: Iterable[str]) -> int:
        """
        Create C{target_id} as the concatenation of the (recoverable contents
        of the) sources, decrypting and re-encrypting one segment at a time,
        and finalize it. On failure the partial target is erased. Returns the length.
        """
        writer = self.create(target_id)
        try:
            for source_id in source_ids:
                with self.reader(source_id) as r:
                    for block in r.blocks(0, r.length):
                        writer.write(block)
            length = writer.finalize()
            writer.close()
        except BaseException:
            writer._f.close()
            self.erase(target_id)
            raise
        return length

    def _path(self, file_id: str, ext: str) -> Path:
        if not _FILE_ID.match(file_id):
            raise ValueError(f"invalid spool file id {file_id!r}")
        return self.directory / f"{file_id}.{ext}"

    def _write_key_record(self, file_id: str, file_key: bytes) -> None:
        tmp = self._path(file_id, "key.tmp")
        record = _KEY_MAGIC + wrap_key(self._master_key, file_key, file_id.encode())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _pwrite_all(fd, record, 0)
            _fdatasync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self._path(file_id, "key"))  # never replaces an existing key
        except FileExistsError:
            raise SpoolExists(f"spool file {file_id} exists") from None
        finally:
            tmp.unlink()
        fsync_directory(self.directory)

    def _open(self, file_id: str, writable: bool) -> _SpoolFile:
        try:
            record = self._path(file_id, "key").read_bytes()
        except FileNotFoundError:
            raise SpoolFileGone(
                f"spool file {file_id} does not exist (never created, or erased)"
            ) from None
        if not record.startswith(_KEY_MAGIC):
            raise SpoolCorrupt(f"spool file {file_id}: key record is not a key record")
        try:
            file_key = unwrap_key(self._master_key, record[len(_KEY_MAGIC) :], file_id.encode())
        except DecryptionError:
            raise SpoolCorrupt(
                f"spool file {file_id}: key record does not open with this master key"
            ) from None
        mode = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            data_fd = os.open(self._path(file_id, "data"), mode)
        except FileNotFoundError:
            raise SpoolCorrupt(f"spool file {file_id}: data file is missing") from None
        try:
            tail_fd = os.open(self._path(file_id, "tail"), mode)
        except FileNotFoundError:
            os.close(data_fd)
            raise SpoolCorrupt(f"spool file {file_id}: state file is missing") from None
        try:
            return _SpoolFile(file_id, data_fd, tail_fd, file_key)
        except BaseException:
            os.close(data_fd)
            os.close(tail_fd)
            raise

    def _remove_files(self, file_id: str) -> None:
        for ext in ("data", "tail", "key.tmp"):
            self._path(file_id, ext).unlink(missing_ok=True)
