"""Tests for relay.crypto: master key file, key wrapping, STREAM segments."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from relay import crypto
from relay.crypto import (
    DecryptionError,
    MasterKeyError,
    SegmentCipher,
    derive_key,
    load_or_create_master_key,
    segment_nonce,
    unwrap_key,
    wrap_key,
)


def test_master_key_created_0600_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "master.key"
    old = os.umask(0)  # a permissive umask must not loosen the file's mode
    try:
        key = load_or_create_master_key(path)
    finally:
        os.umask(old)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key
    assert load_or_create_master_key(path) == key
    assert sorted(p.name for p in path.parent.iterdir()) == ["master.key"]  # no temp file left


def test_master_key_refused_when_group_or_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    load_or_create_master_key(path)
    path.chmod(0o644)
    with pytest.raises(MasterKeyError, match=r"mode 0644.*chmod 600"):
        load_or_create_master_key(path)
    path.chmod(0o640)
    with pytest.raises(MasterKeyError, match="group or others"):
        load_or_create_master_key(path)


def test_master_key_wrong_size_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"x" * 31)
    path.chmod(0o600)
    with pytest.raises(MasterKeyError, match="exactly 32 bytes, found 31"):
        load_or_create_master_key(path)


def test_master_key_not_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.mkdir(mode=0o700)
    with pytest.raises(MasterKeyError, match="not a regular file"):
        load_or_create_master_key(path)


def test_master_key_inside_spool_refused(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    with pytest.raises(MasterKeyError, match="inside the spool directory"):
        load_or_create_master_key(spool / "sub" / "master.key", outside=spool)
    assert not (spool / "sub").exists()
    load_or_create_master_key(tmp_path / "master.key", outside=spool)


def test_master_key_creation_never_replaces_an_existing_key(tmp_path: Path) -> None:
    """Two processes starting at once must end up with one key."""
    path = tmp_path / "master.key"
    first = load_or_create_master_key(path)
    crypto._create_master_key(path)  # the loser of a creation race
    assert load_or_create_master_key(path) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.key"]


def test_wrap_unwrap_bound_to_context() -> None:
    master, key = os.urandom(32), os.urandom(32)
    wrapped = wrap_key(master, key, b"file-1")
    assert key not in wrapped
    assert unwrap_key(master, wrapped, b"file-1") == key
    with pytest.raises(DecryptionError):
        unwrap_key(master, wrapped, b"file-2")
    with pytest.raises(DecryptionError):
        unwrap_key(os.urandom(32), wrapped, b"file-1")
    tampered = bytearray(wrapped)
    tampered[-1] ^= 1
    with pytest.raises(DecryptionError):
        unwrap_key(master, bytes(tampered), b"file-1")
    with pytest.raises(DecryptionError):
        unwrap_key(master, wrapped[:20], b"file-1")


def test_wrapping_twice_gives_different_records() -> None:
    master, key = os.urandom(32), os.urandom(32)
    assert wrap_key(master, key, b"a") != wrap_key(master, key, b"a")


def test_derive_key_depends_on_salt_and_info() -> None:
    key = os.urandom(32)
    a = derive_key(key, b"salt123", b"relay spool v1")
    assert len(a) == 32
    assert a == derive_key(key, b"salt123", b"relay spool v1")
    assert a != derive_key(key, b"salt124", b"relay spool v1")
    assert a != derive_key(key, b"salt123", b"relay spool v1 tail")


def test_segment_nonce_layout() -> None:
    prefix = bytes(range(7))
    assert segment_nonce(prefix, 0x01020304, False) == prefix + b"\x01\x02\x03\x04\x00"
    assert segment_nonce(prefix, 5, True) == prefix + b"\x00\x00\x00\x05\x01"


def test_segment_round_trip_and_binding() -> None:
    cipher = SegmentCipher(os.urandom(32), b"header")
    prefix = os.urandom(7)
    plaintext = os.urandom(100)
    sealed = cipher.seal(prefix, 3, False, plaintext)
    assert len(sealed) == 116
    assert cipher.open(prefix, 3, False, sealed) == plaintext
    out = bytearray(116)
    cipher.seal_into(prefix, 3, False, memoryview(plaintext), memoryview(out))
    assert bytes(out) == sealed
    for args in [(prefix, 4, False), (prefix, 3, True), (os.urandom(7), 3, False)]:
        with pytest.raises(DecryptionError):
            cipher.open(*args, sealed)  # type: ignore[arg-type]
    other = SegmentCipher(os.urandom(32), b"header")
    with pytest.raises(DecryptionError):
        other.open(prefix, 3, False, sealed)
    with pytest.raises(DecryptionError, match="truncated"):
        cipher.open(prefix, 3, False, sealed[:10])


def test_segment_header_is_authenticated() -> None:
    key = os.urandom(32)
    prefix = os.urandom(7)
    sealed = SegmentCipher(key, b"header-a").seal(prefix, 0, True, b"data")
    with pytest.raises(DecryptionError):
        SegmentCipher(key, b"header-b").open(prefix, 0, True, sealed)


def test_segment_counter_overflow_refused() -> None:
    cipher = SegmentCipher(os.urandom(32), b"")
    with pytest.raises(OverflowError):
        cipher.seal(os.urandom(7), 1 << 32, False, b"x")
