"""
Cryptographic helpers shared by the edge and the cloud.

- the master key file (created once, 0600, refused when others can read it);
- small sealed records (AES-256-GCM, random nonce), used to wrap per-file keys;
- the STREAM construction for chunked AEAD (AES-256-GCM per segment, nonce =
  7-byte prefix + 4-byte big-endian segment counter + 1-byte last flag).

Nothing here does file I/O except the master key functions.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_SIZE = 32
TAG_SIZE = 16
RECORD_NONCE_SIZE = 12
NONCE_PREFIX_SIZE = 7
MAX_SEGMENTS = 1 << 32

_COUNTER = struct.Struct(">IB")


class MasterKeyError(Exception):
    """The master key file is missing, unsafe or malformed."""


class DecryptionError(Exception):
    """Authenticated decryption failed: wrong key, or tampered or truncated data."""


def load_or_create_master_key(
    path: str | os.PathLike[str], *, outside: str | os.PathLike[str] | None = None
) -> bytes:
    """
    Return the 32-byte master key stored at C{path}, creating it if missing.

    A new key is written to a temporary file (mode 0600), fsynced, then linked
    into place, so that a crash never leaves a partial key and two processes
    starting together agree on one key. An existing file that group or others
    may access is refused. C{outside}, when given, is a directory the key
    file must not be inside (the spool directory).
    """
    key_path = Path(path)
    if outside is not None:
        resolved = key_path.resolve()
        spool = Path(outside).resolve()
        if resolved == spool or spool in resolved.parents:
            raise MasterKeyError(
                f"master key file {key_path} is inside the spool directory {spool}; "
                "keep it outside so that the spool alone reveals nothing"
            )
    try:
        return _read_master_key(key_path)
    except FileNotFoundError:
        pass
    _create_master_key(key_path)
    return _read_master_key(key_path)


def _read_master_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MasterKeyError(f"master key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise MasterKeyError(
                f"master key file {path} has mode {mode:04o}: group or others may "
                f"access it; refusing to use it (fix with: chmod 600 {path})"
            )
        data = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        raise MasterKeyError(
            f"master key file {path} must hold exactly {KEY_SIZE} bytes, found {len(data)}"
        )
    return data


def _create_master_key(path: Path) -> None:
    directory = path.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_bytes(KEY_SIZE))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link() is rename() that never replaces: a key another process
        # created meanwhile wins, and both processes then load the same key.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            os.rename(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_directory(directory)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a directory's entries (creations, renames, unlinks) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def derive_key(key: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 of C{key} to a 32-byte subkey."""
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(key)


def seal_record(
    key: bytes, plaintext: bytes | bytearray | memoryview, associated_data: bytes
) -> bytes:
    """AES-256-GCM with a fresh random nonce; returns nonce || ciphertext || tag."""
    nonce = secrets.token_bytes(RECORD_NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def open_record(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """Inverse of L{seal_record}; raises L{DecryptionError}."""
    if len(sealed) < RECORD_NONCE_SIZE + TAG_SIZE:
        raise DecryptionError("sealed record is too short")
    nonce = bytes(sealed[:RECORD_NONCE_SIZE])
    try:
        return AESGCM(key).decrypt(nonce, sealed[RECORD_NONCE_SIZE:], associated_data)
    except InvalidTag:
        raise DecryptionError("sealed record failed authentication") from None


def wrap_key(master_key: bytes, key: bytes, context: bytes) -> bytes:
    """Wrap a per-file key with the master key, bound to C{context} (the file id)."""
    return seal_record(master_key, key, b"relay key wrap v1\x00" + context)


def unwrap_key(master_key: bytes, wrapped: bytes, context: bytes) -> bytes:
    """Inverse of L{wrap_key}; raises L{DecryptionError} for a wrong key or context."""
    key = open_record(master_key, wrapped, b"relay key wrap v1\x00" + context)
    if len(key) != KEY_SIZE:
        raise DecryptionError("wrapped key has the wrong length")
    return key


def segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    """The STREAM nonce: 7-byte prefix, 4-byte big-endian counter, last flag."""
    return prefix + _COUNTER.pack(index, 1 if last else 0)


class SegmentCipher:
    """
    AES-256-GCM over the numbered segments of one stream (the STREAM
    construction). Every segment is authenticated together with
    C{associated_data} (the file header), its index and whether it is last,
    so segments cannot be altered, reordered, dropped or truncated unnoticed.
    """

    def __init__(self, key: bytes, associated_data: bytes) -> None:
        self._aead = AESGCM(key)
        self._ad = associated_data

    def seal_into(
        self, prefix: bytes, index: int, last: bool, plaintext: memoryview | bytes, out: memoryview
    ) -> None:
        """Encrypt one segment into C{out}, which is exactly len(plaintext) + 16 bytes."""
        if not 0 <= index < MAX_SEGMENTS:
            raise OverflowError(f"segment index {index} exceeds the 32-bit counter")
        self._aead.encrypt_into(segment_nonce(prefix, index, last), plaintext, self._ad, out)

    def seal(self, prefix: bytes, index: int, last: bool, plaintext: bytes | memoryview) -> bytes:
        """Encrypt one segment; returns ciphertext || tag."""
        out = bytearray(len(plaintext) + TAG_SIZE)
        self.seal_into(prefix, index, last, plaintext, memoryview(out))
        return bytes(out)

    def open(self, prefix: bytes, index: int, last: bool, ciphertext: bytes | memoryview) -> bytes:
        """Decrypt and verify one segment; raises L{DecryptionError}."""
        if len(ciphertext) < TAG_SIZE or not 0 <= index < MAX_SEGMENTS:
            raise DecryptionError(f"segment {index} is truncated")
        try:
            return self._aead.decrypt(segment_nonce(prefix, index, last), ciphertext, self._ad)
        except InvalidTag:
            raise DecryptionError(f"segment {index} failed authentication") from None
