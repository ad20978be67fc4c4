"""Tests for the encrypted spool (relay.edge.uploads.spool)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.edge.uploads import spool as spool_module
from relay.edge.uploads.spool import (
    Spool,
    SpoolCorrupt,
    SpoolError,
    SpoolExists,
    SpoolFileGone,
    SpoolFinalized,
    SpoolFull,
)

SMALL = 64
MIB = 1 << 20
TAG = 16


def header_len(file_id: str) -> int:
    return spool_module._HEADER.size + len(file_id)


def generations(spool: Spool, file_id: str) -> int:
    f = spool._open(file_id, writable=False)
    try:
        return len(f.recover().generations)
    finally:
        f.close()


def grep(directory: Path, pattern: bytes) -> list[str]:
    """Files holding any 16-byte run of the periodic C{pattern}."""
    needles = [(pattern * 2)[k : k + 16] for k in range(len(pattern))]
    found = []
    for p in directory.iterdir():
        raw = p.read_bytes()
        if any(needle in raw for needle in needles):
            found.append(p.name)
    return found


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def spool(tmp_path: Path, master_key: bytes) -> Spool:
    return Spool(tmp_path / "spool", master_key, segment_size=SMALL)


@pytest.fixture
def tmpdir_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


# Random appends, flushes, clean reopens and crashes (a writer dropped
# without close, as by kill -9: what was flushed or sealed stays on disk).
_op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3 * SMALL)),
    st.tuples(st.sampled_from(["flush", "sync", "reopen", "crash"]), st.just(0)),
)


def run_ops(
    directory: Path, segment_size: int, ops: list[tuple[str, int]], finalize: bool, seed: int
) -> None:
    rng = random.Random(seed)
    sp = Spool(directory, os.urandom(32), segment_size=segment_size)
    writer = sp.create("up")
    expected = bytearray()
    flushed = 0
    for op, n in ops:
        if op == "write":
            chunk = rng.randbytes(n)
            assert writer.write(chunk) == len(expected) + n
            expected += chunk
        elif op in ("flush", "sync"):
            assert writer.flush(fsync=op == "sync") == len(expected)
            flushed = len(expected)
            assert sp.length("up") == flushed
        elif op == "reopen":
            writer.close()
            writer = sp.open_writer("up")
            assert writer.offset == len(expected)
            flushed = len(expected)
        else:
            del writer
            writer = sp.open_writer("up")
            recovered = writer.offset
            # Flushed bytes survive, and so does every segment already sealed.
            assert max(flushed, len(expected) // segment_size * segment_size) <= recovered
            assert recovered <= len(expected)
            with sp.reader("up") as r:
                assert r.length == recovered
                assert r.read(0, recovered) == expected[:recovered]
            del expected[recovered:]
            flushed = recovered
        assert writer.offset == len(expected)
    if finalize:
        assert writer.finalize() == len(expected)
    writer.close()
    with sp.reader("up") as r:
        assert (r.length, r.finalized) == (len(expected), finalize)
        assert r.read(0, len(expected)) == expected
        for _ in range(5):
            a = rng.randint(0, len(expected))
            b = rng.randint(a, len(expected))
            assert r.read(a, b - a) == expected[a:b]
            pieces = list(r.blocks(a, b - a))
            assert b"".join(pieces) == expected[a:b]
            assert all(len(p) <= segment_size for p in pieces)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=25), finalize=st.booleans(), seed=st.integers(0, 2**32))
def test_random_appends_round_trip_small_segments(
    ops: list[tuple[str, int]], finalize: bool, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        run_ops(Path(d), SMALL, ops, finalize, seed)


_big_op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, 3 * MIB)),
    st.tuples(st.just("write"), st.integers(0, 70 * 1024)),
    st.tuples(st.sampled_from(["flush", "sync", "reopen", "crash"]), st.just(0)),
)


@settings(max_examples=15, deadline=None)
@given(ops=st.lists(_big_op, max_size=10), finalize=st.booleans(), seed=st.integers(0, 2**32))
@example(  # hypothesis favours small sizes: make sure segments are crossed
    ops=[
        ("write", 1_500_000),
        ("flush", 0),
        ("write", 2 * MIB + 5),
        ("crash", 0),
        ("write", 700_000),
        ("sync", 0),
        ("write", 3 * MIB),
        ("reopen", 0),
        ("write", 65_536),
    ],
    finalize=True,
    seed=1,
)
@example(ops=[("write", 65_536)] * 40 + [("crash", 0), ("write", MIB)], finalize=False, seed=2)
def test_random_appends_round_trip_1mib_segments(
    ops: list[tuple[str, int]], finalize: bool, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as d:
        run_ops(Path(d), MIB, ops, finalize, seed)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    durable=st.integers(0, 10 * SMALL),
    later=st.integers(0, 10 * SMALL),
    soft_flush=st.booleans(),
    cut=st.floats(0, 1),
    same_bytes=st.booleans(),
    seed=st.integers(0, 2**32),
)
def test_truncated_after_last_flush_recovers_a_prefix(
    durable: int, later: int, soft_flush: bool, cut: float, same_bytes: bool, seed: int
) -> None:
    """A power loss may drop anything written after the last fsync."""
    rng = random.Random(seed)
    data = rng.randbytes(durable + later)
    with tempfile.TemporaryDirectory() as d:
        sp = Spool(d, os.urandom(32), segment_size=SMALL)
        w = sp.create("up")
        for i in range(0, durable, 37):
            w.write(data[i : min(i + 37, durable)])
        w.flush(fsync=True)
        w.write(data[durable : durable + later // 2])
        if soft_flush:
            w.flush(fsync=False)
        w.write(data[durable + later // 2 :])
        del w
        data_path = Path(d) / "up.data"
        lower = header_len("up") + (durable // SMALL) * (SMALL + TAG)
        size = data_path.stat().st_size
        os.truncate(data_path, lower + int(cut * (size - lower)))

        recovered = sp.length("up")
        assert durable <= recovered <= len(data)
        with sp.reader("up") as r:
            assert r.read(0, recovered) == data[:recovered]
        # The client resumes from the recovered offset, maybe with other bytes.
        rest = data[recovered:] if same_bytes else rng.randbytes(len(data) - recovered)
        w = sp.open_writer("up")
        assert w.offset == recovered
        w.write(rest)
        w.finalize()
        w.close()
        with sp.reader("up") as r:
            assert r.read(0, r.length) == data[:recovered] + rest


def test_kill_9_keeps_acknowledged_offset(tmp_path: Path, master_key: bytes) -> None:
    """A real SIGKILL after flush(fsync=True): the acknowledged offset survives."""
    child = f"""
import os, random, signal, sys
from relay.edge.uploads.spool import Spool
data = random.Random(7).randbytes(3 * 1024 * 1024)
sp = Spool({str(tmp_path)!r}, {master_key!r}, segment_size=65536)
w = sp.create("up")
w.write(data[:1000001])
print(w.flush(fsync=True), flush=True)
w.write(data[1000001:2000000])
print(w.flush(fsync=False), flush=True)
w.write(data[2000000:])
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr.decode()
    acked, soft = (int(x) for x in proc.stdout.split())
    data = random.Random(7).randbytes(3 * 1024 * 1024)
    sp = Spool(tmp_path, master_key)
    recovered = sp.length("up")
    assert acked == 1000001 and soft == 2000000
    # Full segments sealed after the last flush are kept too.
    assert len(data) // 65536 * 65536 <= recovered <= len(data)
    with sp.reader("up") as r:
        assert r.read(0, recovered) == data[:recovered]
    w = sp.open_writer("up")
    w.write(data[recovered:])
    w.finalize()
    w.close()
    with sp.reader("up") as r:
        assert r.read(0, r.length) == data


def test_crash_during_finalize_is_recovered_as_complete(spool: Spool) -> None:
    data = os.urandom(5 * SMALL + 9)
    w = spool.create("up")
    w.write(data)
    w.flush()
    tail_path = spool.directory / "up.tail"
    before = tail_path.read_bytes()
    w.finalize()
    w.close()
    tail_path.write_bytes(before)  # the last state record never reached the disk
    with spool.reader("up") as r:
        assert (r.length, r.finalized) == (len(data), True)
        assert r.read(0, len(data)) == data
    with pytest.raises(SpoolFinalized):
        spool.open_writer("up")


@pytest.mark.parametrize("clean_close_between", [False, True])
def test_unclean_restart_uses_fresh_nonces(spool: Spool, clean_close_between: bool) -> None:
    """
    A segment lost in a crash and re-sent with other bytes must not be
    sealed under the nonce its lost version used (GCM nonce reuse), even
    if a later session closed cleanly before sealing anything.
    """
    first = os.urandom(SMALL)
    w = spool.create("up")
    w.write(first)  # sealed, never synced
    del w
    data_path = spool.directory / "up.data"
    lost = data_path.read_bytes()[header_len("up") :][:SMALL]
    os.truncate(data_path, header_len("up"))  # ... and lost in a power cut
    w = spool.open_writer("up")
    assert w.offset == 0
    if clean_close_between:
        w.write(b"x")
        w.close()
        w = spool.open_writer("up")
    w.write(os.urandom(SMALL))
    w.finalize()
    w.close()
    with spool.reader("up") as r:
        second = r.read(0, SMALL)
    again = data_path.read_bytes()[header_len("up") :][:SMALL]
    keystream_a = bytes(x ^ y for x, y in zip(lost, first, strict=True))
    keystream_b = bytes(x ^ y for x, y in zip(again, second, strict=True))
    assert keystream_a != keystream_b
    assert generations(spool, "up") == 2


def test_power_loss_during_unsynced_flushes_keeps_durable_record(spool: Spool) -> None:
    """
    flush(fsync=False) must never overwrite the last fsynced state record:
    a power cut may tear every record written after it.
    """
    data = os.urandom(6 * SMALL)
    w = spool.create("up")
    w.write(data[:100])
    w.flush(fsync=True)
    tail_path = spool.directory / "up.tail"
    synced = tail_path.read_bytes()
    for i in range(100, len(data), 50):
        w.write(data[i : i + 50])
        w.flush(fsync=False)
    slot_size = w._f.slot_size
    del w
    raw = bytearray(tail_path.read_bytes())
    for slot in (0, 1):  # every record rewritten since the fsync is torn
        region = slice(slot * slot_size, (slot + 1) * slot_size)
        if raw[region] != synced[region].ljust(slot_size, b"\0")[:slot_size]:
            raw[slot * slot_size + 60 : slot * slot_size + 70] = b"\xff" * 10
    tail_path.write_bytes(bytes(raw))
    os.truncate(spool.directory / "up.data", header_len("up") + SMALL + TAG)
    assert spool.length("up") == 100
    with spool.reader("up") as r:
        assert r.read(0, 100) == data[:100]


def test_clean_reopen_keeps_one_generation(spool: Spool) -> None:
    w = spool.create("up")
    for _ in range(5):
        w.write(os.urandom(100))
        w.close()
        w = spool.open_writer("up")
    w.write(os.urandom(100))
    w.finalize()
    w.close()
    assert generations(spool, "up") == 1
    assert spool.length("up") == 600


def test_newest_state_record_torn_falls_back(spool: Spool) -> None:
    data = os.urandom(3 * SMALL + 10)
    w = spool.create("up")
    w.write(data[:100])
    w.flush(fsync=True)
    w.write(data[100:])
    w.flush(fsync=False)  # goes to the other slot than the durable one
    del w
    f = spool._open("up", writable=False)
    newest = max((f.read_state(0), f.read_state(1)), key=lambda s: s.seq if s else 0)
    assert newest is not None
    slot_size = f.slot_size
    f.close()
    tail_path = spool.directory / "up.tail"
    raw = bytearray(tail_path.read_bytes())
    raw[newest.slot * slot_size + 40] ^= 0xFF
    tail_path.write_bytes(bytes(raw))
    recovered = spool.length("up")
    assert 100 <= recovered <= len(data)
    with spool.reader("up") as r:
        assert r.read(0, recovered) == data[:recovered]


def test_reader_sees_flushed_state_while_writing(spool: Spool) -> None:
    w = spool.create("up")
    w.write(b"a" * 100)
    w.flush(fsync=False)
    w.write(b"b" * 10)
    with spool.reader("up") as r:
        assert (r.length, r.finalized) == (100, False)
        assert r.read(0, 100) == b"a" * 100
    assert spool.stat("up").length == 100
    w.close()
    assert spool.length("up") == 110


@pytest.mark.parametrize("segment_size", [SMALL, MIB])
def test_plaintext_never_on_disk(tmp_path: Path, master_key: bytes, segment_size: int) -> None:
    marker = b"RELAY-PLAINTEXT-MARKER-0123456789"
    sp = Spool(tmp_path / "spool", master_key, segment_size=segment_size)
    # Small pieces of a repeated pattern: any plaintext run on disk would match.
    payload = marker * (max(3 * segment_size, 20_000) // len(marker) + 7)
    piece = 333 if segment_size == SMALL else 40_000  # ~70 grep rounds either way
    w = sp.create("up")
    for n, i in enumerate(range(0, len(payload), piece)):
        w.write(payload[i : i + piece])
        assert grep(sp.directory, marker) == []
        if n % 3 == 0:
            w.flush(fsync=n % 2 == 0)
            assert grep(sp.directory, marker) == []
    w.flush()
    assert grep(sp.directory, marker) == []
    w.finalize()
    w.close()
    assert grep(sp.directory, marker) == []
    with sp.reader("up") as r:
        assert r.read(0, r.length) == payload


def make_complete(spool: Spool, file_id: str, size: int) -> bytes:
    data = os.urandom(size)
    with spool.create(file_id) as w:
        w.write(data)
        w.finalize()
    return data


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_tampered_segment_is_refused(spool: Spool) -> None:
    data = make_complete(spool, "up", 4 * SMALL + 5)
    flip(spool.directory / "up.data", header_len("up") + 2 * (SMALL + TAG) + 3)
    with spool.reader("up") as r:
        assert r.read(0, 2 * SMALL) == data[: 2 * SMALL]
        assert r.read(3 * SMALL, SMALL + 5) == data[3 * SMALL :]
        with pytest.raises(SpoolCorrupt, match="segment 2"):
            r.read(2 * SMALL + 10, 1)
        with pytest.raises(SpoolCorrupt):
            list(r.blocks(0, r.length))


def test_swapped_segments_are_refused(spool: Spool) -> None:
    make_complete(spool, "up", 4 * SMALL)
    path = spool.directory / "up.data"
    raw = path.read_bytes()
    h, s = header_len("up"), SMALL + TAG
    path.write_bytes(raw[:h] + raw[h + s : h + 2 * s] + raw[h : h + s] + raw[h + 2 * s :])
    with spool.reader("up") as r, pytest.raises(SpoolCorrupt):
        r.read(0, SMALL)


@pytest.mark.parametrize("removed", [1, TAG, TAG + 1, TAG + SMALL + TAG])
def test_truncated_complete_file_is_refused(spool: Spool, removed: int) -> None:
    """3 full segments and an empty final one; any cut at the end is noticed."""
    make_complete(spool, "up", 3 * SMALL)
    path = spool.directory / "up.data"
    os.truncate(path, path.stat().st_size - removed)
    with pytest.raises(SpoolCorrupt):
        with spool.reader("up") as r:
            r.read(0, 3 * SMALL)


def test_appended_garbage_is_refused(spool: Spool) -> None:
    make_complete(spool, "up", 100)
    with open(spool.directory / "up.data", "ab") as f:
        f.write(b"\0" * 80)
    with pytest.raises(SpoolCorrupt):
        spool.reader("up")


def test_tampered_header_or_state_is_refused(spool: Spool) -> None:
    make_complete(spool, "a", 200)
    flip(spool.directory / "a.data", 12)
    with pytest.raises(SpoolCorrupt):
        spool.reader("a")
    make_complete(spool, "b", 200)
    raw = bytearray((spool.directory / "b.tail").read_bytes())
    for i in range(len(raw)):
        raw[i] ^= 0x55
    (spool.directory / "b.tail").write_bytes(bytes(raw))
    with pytest.raises(SpoolCorrupt, match="no valid state record"):
        spool.reader("b")


def test_key_records_are_bound_to_their_file(spool: Spool, master_key: bytes) -> None:
    make_complete(spool, "a", 10)
    make_complete(spool, "b", 10)
    (spool.directory / "a.key").write_bytes((spool.directory / "b.key").read_bytes())
    with pytest.raises(SpoolCorrupt, match="key record"):
        spool.reader("a")
    other = Spool(spool.directory, os.urandom(32), segment_size=SMALL)
    with pytest.raises(SpoolCorrupt, match="master key"):
        other.reader("b")
    flip(spool.directory / "b.key", 30)
    with pytest.raises(SpoolCorrupt):
        spool.reader("b")


def test_crypto_erase(spool: Spool) -> None:
    make_complete(spool, "up", 300)
    make_complete(spool, "keep", 300)
    reader = spool.reader("up")
    reader.close()
    assert spool.erase("up") is True
    assert not [p for p in spool.directory.iterdir() if p.name.startswith("up.")]
    assert not spool.exists("up")
    assert spool.list_ids() == ["keep"]
    with pytest.raises(SpoolFileGone):
        spool.reader("up")
    with pytest.raises(SpoolFileGone):
        spool.length("up")
    with pytest.raises(SpoolFileGone):
        spool.open_writer("up")
    assert spool.erase("up") is False
    assert spool.length("keep") == 300


def test_missing_key_record_means_gone(spool: Spool) -> None:
    make_complete(spool, "up", 300)
    (spool.directory / "up.key").unlink()
    with pytest.raises(SpoolFileGone):
        spool.reader("up")
    assert spool.list_ids() == []
    assert sorted(spool.remove_orphans()) == ["up.data", "up.tail"]
    assert list(spool.directory.iterdir()) == []


def test_api_errors(spool: Spool) -> None:
    w = spool.create("up")
    with pytest.raises(SpoolExists):
        spool.create("up")
    w.write(b"x" * 10)
    assert w.finalize() == 10
    assert w.finalize() == 10
    assert w.flush() == 10
    with pytest.raises(SpoolFinalized):
        w.write(b"y")
    w.close()
    with pytest.raises(SpoolError):
        w.write(b"y")
    with pytest.raises(SpoolFinalized):
        spool.open_writer("up")
    for bad in ["", "../x", "a.b", "x" * 129, "a/b"]:
        with pytest.raises(ValueError):
            spool.create(bad)
    with pytest.raises(SpoolFileGone):
        spool.reader("nope")
    with spool.reader("up") as r:
        with pytest.raises(ValueError):
            r.read(5, 6)
        with pytest.raises(ValueError):
            r.read(-1, 1)
    with pytest.raises(ValueError):
        Spool(spool.directory, b"short")
    with pytest.raises(ValueError):
        Spool(spool.directory, os.urandom(32), segment_size=3 * MIB)


def test_empty_and_exact_multiple_files(spool: Spool) -> None:
    for size in (0, SMALL, 3 * SMALL):
        data = make_complete(spool, f"f{size}", size)
        with spool.reader(f"f{size}") as r:
            assert (r.length, r.finalized) == (size, True)
            assert r.read(0, size) == data
            assert list(r.blocks(size, 0)) == []


def test_writes_accept_any_buffer(spool: Spool) -> None:
    w = spool.create("up")
    w.write(bytearray(b"ab"))
    w.write(memoryview(b"xxcdxx")[2:4])
    w.write(b"")
    w.finalize()
    w.close()
    with spool.reader("up") as r:
        assert r.read(0, 4) == b"abcd"


def test_blocks_are_segment_aligned(tmp_path: Path, master_key: bytes) -> None:
    sp = Spool(tmp_path, master_key, segment_size=MIB)
    data = make_complete(sp, "up", 20 * MIB + 123)
    part = 8 * MIB
    with sp.reader("up") as r:
        for start in range(0, len(data), part):
            size = min(part, len(data) - start)
            pieces = list(r.blocks(start, size))
            assert [len(p) for p in pieces[:-1]] == [MIB] * (len(pieces) - 1)
            assert b"".join(pieces) == data[start : start + size]


def test_concatenate(spool: Spool) -> None:
    parts = [make_complete(spool, f"p{i}", n) for i, n in enumerate([130, 0, 64, 1])]
    assert spool.concatenate("final", [f"p{i}" for i in range(4)]) == 195
    with spool.reader("final") as r:
        assert r.finalized
        assert r.read(0, r.length) == b"".join(parts)
    assert spool.length("p0") == 130
    with pytest.raises(SpoolFileGone):
        spool.concatenate("broken", ["p0", "missing"])
    assert not spool.exists("broken")
    assert not [p for p in spool.directory.iterdir() if p.name.startswith("broken.")]


def test_free_bytes_and_listing(spool: Spool) -> None:
    assert spool.free_bytes() > 0
    make_complete(spool, "b", 1)
    make_complete(spool, "a", 1)
    assert spool.list_ids() == ["a", "b"]
    assert spool.exists("a") and not spool.exists("c")


class DiskFills:
    """Replaces the spool's pwrite seam: data-file writes fail once a budget is spent."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.real = spool_module._pwrite_all

    def __call__(self, fd: int, data: memoryview | bytes, offset: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".data"):
            if len(data) > self.budget:
                self.real(fd, bytes(data)[: self.budget], offset)  # a torn write
                self.budget = 0
                raise SpoolFull("spool disk full: No space left on device")
            self.budget -= len(data)
        self.real(fd, data, offset)


def test_disk_full_keeps_durable_prefix(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(20 * SMALL)
    w = spool.create("up")
    w.write(data[:150])
    w.flush()
    disk = DiskFills(budget=3 * (SMALL + TAG) + 20)
    monkeypatch.setattr(spool_module, "_pwrite_all", disk)
    with pytest.raises(SpoolFull) as e:
        w.write(data[150:])
    accepted = e.value.offset
    assert accepted is not None and 150 <= accepted < len(data)
    assert w.offset == accepted
    # The durable prefix is intact, and what was accepted can still be flushed.
    assert spool.length("up") >= 150
    with spool.reader("up") as r:
        assert r.read(0, r.length) == data[: r.length]
    assert w.flush() == accepted
    assert spool.length("up") == accepted
    with spool.reader("up") as r:
        assert r.read(0, accepted) == data[:accepted]
    # Space comes back: the writer goes on, under a fresh nonce prefix.
    monkeypatch.setattr(spool_module, "_pwrite_all", disk.real)
    w.write(data[accepted:])
    w.finalize()
    w.close()
    with spool.reader("up") as r:
        assert r.read(0, r.length) == data
    assert generations(spool, "up") == 2


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_real_enospc_on_tmpfs(tiny_tmpfs: Path, master_key: bytes) -> None:
    sp = Spool(tiny_tmpfs / "spool", master_key, segment_size=64 * 1024)
    data = os.urandom(1024 * 1024)
    w = sp.create("up")
    w.write(data[:100_000])
    w.flush()
    accepted = None
    for i in range(100_000, len(data), 10_000):
        try:
            w.write(data[i : i + 10_000])
        except SpoolFull as e:
            accepted = e.offset
            break
    assert accepted is not None, "the disk never filled up"
    assert sp.free_bytes() < 64 * 1024 + TAG
    with sp.reader("up") as r:
        assert r.length >= 100_000
        assert r.read(0, r.length) == data[: r.length]
    assert w.flush() == accepted  # the state record's space was reserved at create
    w.close()
    with sp.reader("up") as r:
        assert r.length == accepted
        assert r.read(0, accepted) == data[:accepted]


def test_state_records_follow_the_data_they_describe(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability order: data synced, then the state record written, then synced."""
    log: list[tuple[str, str]] = []
    real_write, real_sync = spool_module._pwrite_all, spool_module._fdatasync

    def kind(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}").rsplit(".", 1)[1]

    def write(fd: int, data: memoryview | bytes, offset: int) -> None:
        log.append(("write", kind(fd)))
        real_write(fd, data, offset)

    def sync(fd: int) -> None:
        log.append(("sync", kind(fd)))
        real_sync(fd)

    monkeypatch.setattr(spool_module, "_pwrite_all", write)
    monkeypatch.setattr(spool_module, "_fdatasync", sync)
    w = spool.create("up")
    log.clear()
    w.write(os.urandom(3 * SMALL + 5))
    w.flush(fsync=True)
    assert log == [("write", "data")] * 3 + [("sync", "data"), ("write", "tail"), ("sync", "tail")]
    log.clear()
    w.flush(fsync=True)
    assert log == []  # nothing new: no I/O
    w.write(b"x" * 10)
    w.finalize()
    assert log == [("write", "data"), ("sync", "data"), ("write", "tail"), ("sync", "tail")]
    w.close()


def test_every_fsynced_state_record_claims_only_synced_data(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durable record must not depend on segments a power cut could take."""
    real_sync = spool_module._fdatasync
    checked = []

    def sync(fd: int) -> None:
        real_sync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tail") and spool.exists("up"):
            f = spool._open("up", writable=False)
            try:
                newest = max(
                    (s for s in (f.read_state(0), f.read_state(1)) if s), key=lambda s: s.seq
                )
            finally:
                f.close()
            assert newest.synced == newest.full
            checked.append(newest.seq)

    monkeypatch.setattr(spool_module, "_fdatasync", sync)
    data = os.urandom(10 * SMALL)
    w = spool.create("up")
    w.write(data[: 3 * SMALL + 10])  # three segments sealed, not synced
    disk = DiskFills(budget=0)
    monkeypatch.setattr(spool_module, "_pwrite_all", disk)
    with pytest.raises(SpoolFull) as e:
        w.write(data[3 * SMALL + 10 : 4 * SMALL])  # the tail fills; sealing it fails
    assert e.value.offset == 4 * SMALL
    monkeypatch.setattr(spool_module, "_pwrite_all", disk.real)
    assert w.write(b"") == 4 * SMALL  # seals the tail under a new prefix
    assert w.flush(fsync=True) == 4 * SMALL
    w.write(data[4 * SMALL :])
    w.close()
    w = spool.open_writer("up")
    w.finalize()
    w.close()
    assert len(checked) >= 4
    with spool.reader("up") as r:
        assert r.read(0, r.length) == data
