"""
The cloud's records of transfers (C{transfers}), the part digests each
presigned URL was bound to (C{transfer_digests}), the receiver's tokens
and partial uploads (L{relay.cloud.receiver.store}), and the edges' requests
waiting to be processed (C{transfer_requests}); with the checks a finished
upload must pass.  Portable SQL: the same steps run on SQLite and on
PostgreSQL (L{relay.db}).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.cloud.objects import SHA256_METADATA, ObjectInfo, PartInfo, md5_hex, multipart_etag
from relay.cloud.receiver.store import TABLES as RECEIVER_TABLES
from relay.db import Schema

SCHEMA = Schema(
    "transfers",
    [
        """
        CREATE TABLE transfers (
            id TEXT PRIMARY KEY,
            edge TEXT NOT NULL,
            file_id TEXT NOT NULL,
            project TEXT NOT NULL,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            content_type TEXT NOT NULL,
            size BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            part_size BIGINT NOT NULL,
            part_count INTEGER NOT NULL,
            object_key TEXT NOT NULL,
            upload_id TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('open', 'completed', 'registered', 'aborted', 'failed')),
            etag TEXT NOT NULL DEFAULT '',
            error TEXT NOT NULL DEFAULT '',
            created DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE transfer_digests (
            transfer_id TEXT NOT NULL,
            number INTEGER NOT NULL,
            md5 TEXT NOT NULL,
            PRIMARY KEY (transfer_id, number)
        );
        CREATE TABLE transfer_requests (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            transfer_id TEXT NOT NULL,
            edge TEXT NOT NULL,
            kind TEXT NOT NULL,
            body TEXT NOT NULL,
            received DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT
        );
        CREATE INDEX transfer_requests_transfer ON transfer_requests (transfer_id, position);
        """,
        # The tus receiver's tokens and partial uploads.
        RECEIVER_TABLES,
    ],
)


@dataclass(frozen=True)
class Transfer:
    """One multipart upload an edge fills (a row of C{transfers})."""

    id: str
    edge: str
    file_id: str
    project: str
    owner: str
    name: str
    content_type: str
    size: int
    sha256: str
    part_size: int
    part_count: int
    object_key: str
    upload_id: str
    state: str
    etag: str = ""

    def part_length(self, number: int) -> int:
        if number < self.part_count:
            return self.part_size
        return self.size - (self.part_count - 1) * self.part_size


@dataclass(frozen=True)
class Request:
    position: int
    transfer_id: str
    edge: str
    kind: str
    body: dict[str, Any]
    attempts: int



def missing_parts(t: Transfer, parts: list[PartInfo], digests: Mapping[int, str]) -> list[int]:
    by_number = {p.number: p for p in parts}
    missing = []
    for number in range(1, t.part_count + 1):
        part, md5 = by_number.get(number), digests.get(number)
        if part is None or md5 is None or part.size != t.part_length(number) or part.etag != md5_hex(md5):
            missing.append(number)
    return missing


def verify_object(t: Transfer, info: ObjectInfo | None, etag: str, digests: Mapping[int, str]) -> str | None:
    if info is None:
        return "the completed object is not there"
    if info.size != t.size:
        return f"the object has {info.size} bytes, not {t.size}"
    if info.metadata.get(SHA256_METADATA) != t.sha256:
        return "the object's sha256 metadata is not the announced one"
    if "-" in etag:
        expected = multipart_etag(base64.b64decode(digests[n]) for n in range(1, t.part_count + 1))
        if etag != expected:
            return f"the object's ETag is {etag}, not {expected}"
    return None


def due_requests(conn: Any, now: float, busy: list[str]) -> list[Request]:
    rows = conn.execute(
        "SELECT position, transfer_id, edge, kind, body, attempts FROM transfer_requests r "
        # A transfer's requests in arrival order, but its begin first (a
        # request that overtook its begin must not block it).
        "WHERE position = (SELECT f.position FROM transfer_requests f WHERE f.transfer_id = r.transfer_id "
        "ORDER BY CASE WHEN f.kind = 'transfer.begin' THEN 0 ELSE 1 END, f.position LIMIT 1) "
        "AND not_before <= ? ORDER BY position LIMIT 200",
        (now,),
    ).fetchall()
    return [Request(int(r[0]), r[1], r[2], r[3], json.loads(r[4]), int(r[5])) for r in rows if r[1] not in busy]


def load_transfer(conn: Any, transfer_id: str) -> Transfer | None:
    row = conn.execute(
        "SELECT id, edge, file_id, project, owner, name, content_type, size, sha256, part_size, part_count, "
        "object_key, upload_id, state, etag FROM transfers WHERE id = ?",
        (transfer_id,),
    ).fetchone()
    return None if row is None else Transfer(*(row[i] for i in range(15)))


def digests_of(conn: Any, transfer_id: str) -> dict[int, str]:
    return {int(r[0]): r[1] for r in conn.execute(
        "SELECT number, md5 FROM transfer_digests WHERE transfer_id = ?", (transfer_id,))}


def remember_digests(conn: Any, transfer_id: str, parts: list[tuple[int, str]]) -> None:
    conn.executemany(
        "INSERT INTO transfer_digests (transfer_id, number, md5) VALUES (?, ?, ?) "
        "ON CONFLICT (transfer_id, number) DO UPDATE SET md5 = excluded.md5",
        [(transfer_id, n, md5) for n, md5 in parts],
    )


def record_completed(conn: Any, transfer_id: str, etag: str, now: float) -> None:
    conn.execute("UPDATE transfers SET state = 'completed', etag = ?, updated = ? WHERE id = ?",
                 (etag, now, transfer_id))


def record_postponed(conn: Any, position: int, attempts: int, not_before: float, error: str) -> None:
    conn.execute("UPDATE transfer_requests SET attempts = ?, not_before = ?, last_error = ? WHERE position = ?",
                 (attempts, not_before, error, position))
