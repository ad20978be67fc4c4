"""
Small files over AMQP: job outputs and other files too small to be worth a
trip through S3 travel as binary chunks of the link itself.

The sender splits a file into C{file.chunk} messages (64 to 256 KiB each,
128 KiB by default), all committed to the outbox in one transaction.  Each
chunk's envelope names the file, the chunk's index, the number of chunks,
the file's size and its sha256; the chunk itself is the message's binary
payload.  The receiver writes each chunk at its place in a partial file as
it arrives, in any order, records it in the same transaction as the inbox
records the message, and when the last one is in, checks the whole file's
sha256 and moves it into place.  A file whose chunks stop arriving is
removed after a timeout.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relay.db import Schema
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope
from relay.link.outbox import Outbox

CHUNK_TYPE = "file.chunk"
DEFAULT_CHUNK = 128 * 1024
MIN_CHUNK, MAX_CHUNK = 64 * 1024, 256 * 1024
MAX_SIZE = 64 * 1024 * 1024

CHUNK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["file_id", "index", "count", "size", "sha256", "chunk_size"],
    "properties": {
        "file_id": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
        "index": {"type": "integer", "minimum": 0},
        "count": {"type": "integer", "minimum": 1},
        "size": {"type": "integer", "minimum": 0, "maximum": MAX_SIZE},
        "chunk_size": {"type": "integer", "minimum": MIN_CHUNK, "maximum": MAX_CHUNK},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "meta": {"type": "object"},
    },
    "additionalProperties": False,
}

SCHEMA = Schema(
    "smallfiles",
    [
        """
        CREATE TABLE smallfile (
            file_id TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            count INTEGER NOT NULL,
            received INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL CHECK (state IN ('partial', 'complete', 'corrupt')),
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        );
        CREATE TABLE smallfile_chunk (
            file_id TEXT NOT NULL REFERENCES smallfile (file_id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            PRIMARY KEY (file_id, idx)
        );
        """,
    ],
)


def register_types(catalogue: Catalogue) -> None:
    catalogue.register(CHUNK_TYPE, CHUNK_SCHEMA, description="one chunk of a small file")


def put_file(
    outbox: Outbox,
    conn: sqlite3.Connection,
    file_id: str,
    data: bytes,
    *,
    to: str,
    chunk_size: int = DEFAULT_CHUNK,
    meta: dict[str, Any] | None = None,
) -> int:
    """
    Queue C{data} as chunk messages inside the caller's transaction; return
    the number of chunks.  Call the outbox's C{wake} after commit.
    """
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk size must be {MIN_CHUNK} to {MAX_CHUNK} bytes")
    if len(data) > MAX_SIZE:
        raise ValueError(f"{len(data)} bytes is not a small file (at most {MAX_SIZE}); use S3")
    digest = hashlib.sha256(data).hexdigest()
    count = max(1, -(-len(data) // chunk_size))
    view = memoryview(data)
    for index in range(count):
        body: dict[str, Any] = {
            "file_id": file_id, "index": index, "count": count, "size": len(data),
            "sha256": digest, "chunk_size": chunk_size,
        }
        if meta:
            body["meta"] = meta
        chunk = bytes(view[index * chunk_size : (index + 1) * chunk_size])
        outbox.put(conn, CHUNK_TYPE, body, to=to, payload=chunk)
    return count


@dataclass(frozen=True)
class ReceivedFile:
    file_id: str
    path: Path
    size: int
    sha256: str
    meta: dict[str, Any]


#: Called in the transaction that completes a file.
OnComplete = Callable[[sqlite3.Connection, ReceivedFile], None]


class CorruptFile(Exception):
    """
    All chunks arrived but the file's sha256 does not match.
    """


class SmallFileAssembler:
    """
    Reassembles chunk messages into files under C{directory}.

    Register L{handle} with the inbox for C{file.chunk}.  Partial files are
    C{<file_id>.part}; a complete, verified one is renamed to C{<file_id>}.
    """

    log = Logger()

    def __init__(
        self, directory: Path, reactor: IReactorTime, on_complete: OnComplete | None = None,
        *, partial_timeout: float = 3600.0,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._reactor = reactor
        self._on_complete = on_complete
        self.partial_timeout = partial_timeout

    def path(self, file_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", file_id) or file_id in (".", ".."):
            raise ValueError(f"bad file id {file_id!r}")
        return self.directory / file_id

    def handle(self, conn: sqlite3.Connection, message: Envelope) -> None:
        """
        The inbox handler: place one chunk (on the database thread).
        """
        body = message.body
        file_id, index, count = body["file_id"], body["index"], body["count"]
        chunk = message.payload or b""
        expected = min(body["chunk_size"], body["size"] - index * body["chunk_size"])
        if index >= count or count != max(1, -(-body["size"] // body["chunk_size"])) or len(chunk) != max(expected, 0):
            raise ValueError(f"chunk {index}/{count} of {file_id} does not fit the file's size")
        now = self._reactor.seconds()
        row = conn.execute("SELECT size, sha256, count, state FROM smallfile WHERE file_id = ?", (file_id,)).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO smallfile (file_id, size, sha256, count, state, first_seen, last_seen) "
                "VALUES (?, ?, ?, ?, 'partial', ?, ?)",
                (file_id, body["size"], body["sha256"], count, now, now),
            )
        elif (row[0], row[1], row[2]) != (body["size"], body["sha256"], count):
            raise ValueError(f"chunk {index} of {file_id} disagrees with earlier chunks")
        elif row[3] != "partial":
            return  # a late duplicate of a finished file
        if conn.execute("SELECT 1 FROM smallfile_chunk WHERE file_id = ? AND idx = ?", (file_id, index)).fetchone():
            return
        final = self.path(file_id)
        partial = final.with_name(final.name + ".part")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, chunk, index * body["chunk_size"])
            os.fsync(fd)
        finally:
            os.close(fd)
        conn.execute("INSERT INTO smallfile_chunk (file_id, idx) VALUES (?, ?)", (file_id, index))
        received = conn.execute(
            "UPDATE smallfile SET received = received + 1, last_seen = ? WHERE file_id = ? RETURNING received",
            (now, file_id),
        ).fetchone()[0]
        if received < count:
            return
        digest = _sha256(partial)
        if digest != body["sha256"] or partial.stat().st_size != body["size"]:
            conn.execute("UPDATE smallfile SET state = 'corrupt' WHERE file_id = ?", (file_id,))
            partial.unlink()
            self.log.error("small file {id} arrived corrupt (sha256 {got})", id=file_id, got=digest)
            return
        os.replace(partial, final)
        conn.execute("UPDATE smallfile SET state = 'complete' WHERE file_id = ?", (file_id,))
        conn.execute("DELETE FROM smallfile_chunk WHERE file_id = ?", (file_id,))
        if self._on_complete is not None:
            self._on_complete(
                conn, ReceivedFile(file_id, final, body["size"], digest, body.get("meta") or {})
            )

    def expire(self, conn: sqlite3.Connection) -> list[str]:
        """
        Remove partial files whose last chunk is older than the timeout
        (on the database thread); return their ids.
        """
        cutoff = self._reactor.seconds() - self.partial_timeout
        stale = [
            row[0]
            for row in conn.execute(
                "SELECT file_id FROM smallfile WHERE state = 'partial' AND last_seen < ?", (cutoff,)
            )
        ]
        for file_id in stale:
            partial = self.path(file_id).with_name(file_id + ".part")
            partial.unlink(missing_ok=True)
            conn.execute("DELETE FROM smallfile WHERE file_id = ?", (file_id,))
            self.log.warn("small file {id} expired incomplete", id=file_id)
        return stale


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
