"""
Upload records in the edge's database: who owns an upload, how long it is,
how much of it the spool holds, and where it is on its way to the cloud.

The spool holds the bytes; this table holds what they are.  C{offset} is
only ever raised after the spool has made those bytes durable, so after a
crash it may trail the spool (the receiver then catches it up at startup),
never lead it.
"""

from __future__ import annotations

import enum
import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred

from relay.db import Database, Schema


class UploadState(enum.StrEnum):
    """
    Where an upload is.  Transitions: C{receiving -> staged -> transferring
    -> in_cloud}, and C{transferring -> failed} (the transfer stage may move
    a failed upload back to C{transferring} to retry).  Partial uploads
    (concatenation) stay C{receiving} until a final upload consumes them.
    """

    RECEIVING = "receiving"
    STAGED = "staged"
    TRANSFERRING = "transferring"
    IN_CLOUD = "in_cloud"
    FAILED = "failed"


#: States whose bytes still occupy the spool (and the owner's quota).
HELD = (UploadState.RECEIVING, UploadState.STAGED, UploadState.TRANSFERRING, UploadState.FAILED)


@dataclass(frozen=True)
class Upload:
    """One upload's record."""

    id: str
    owner: str
    project: str
    filename: str
    filetype: str
    #: Total size in bytes; C{None} while the client defers it.
    length: int | None
    #: Bytes durably received.
    offset: int = 0
    #: The raw C{Upload-Metadata} header, echoed on HEAD.
    raw_metadata: str = ""
    #: C{"partial"}, C{"final"} or C{""}.
    concat: str = ""
    #: For a final upload: the ids of its parts, in order.
    parts: tuple[str, ...] = ()
    state: UploadState = UploadState.RECEIVING
    created: float = 0.0
    updated: float = 0.0
    #: When an unfinished upload is erased (C{None} once complete).
    expires: float | None = None
    #: Bytes the transfer stage has moved to the cloud.
    transferred: int = 0
    #: Why the transfer failed, for people.
    error: str = ""

    @property
    def complete(self) -> bool:
        return self.length is not None and self.offset == self.length

    @property
    def progress(self) -> float:
        """Fraction of the current stage done: receiving, then transfer."""
        if self.state is UploadState.IN_CLOUD:
            return 1.0
        if self.state in (UploadState.TRANSFERRING, UploadState.FAILED) and self.length:
            return min(1.0, self.transferred / self.length)
        if self.state is UploadState.STAGED:
            return 0.0 if self.length else 1.0
        if not self.length:
            return 0.0 if self.length is None else 1.0
        return self.offset / self.length

    def replace(self, **changes: Any) -> Upload:
        return replace(self, **changes)


SCHEMA = Schema(
    "uploads",
    [
        """
        CREATE TABLE uploads (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            project TEXT NOT NULL,
            filename TEXT NOT NULL,
            filetype TEXT NOT NULL,
            length INTEGER,
            "offset" INTEGER NOT NULL DEFAULT 0,
            raw_metadata TEXT NOT NULL DEFAULT '',
            concat TEXT NOT NULL DEFAULT '',
            parts TEXT NOT NULL DEFAULT '[]',
            state TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL,
            expires REAL,
            transferred INTEGER NOT NULL DEFAULT 0,
            error TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX uploads_owner ON uploads (owner, created);
        CREATE INDEX uploads_state ON uploads (state, expires);
        """,
    ],
)

_COLUMNS = (
    'id, owner, project, filename, filetype, length, "offset", raw_metadata, concat, parts, '
    "state, created, updated, expires, transferred, error"
)


def _row(row: sqlite3.Row) -> Upload:
    return Upload(
        id=row["id"],
        owner=row["owner"],
        project=row["project"],
        filename=row["filename"],
        filetype=row["filetype"],
        length=row["length"],
        offset=row["offset"],
        raw_metadata=row["raw_metadata"],
        concat=row["concat"],
        parts=tuple(json.loads(row["parts"])),
        state=UploadState(row["state"]),
        created=row["created"],
        updated=row["updated"],
        expires=row["expires"],
        transferred=row["transferred"],
        error=row["error"],
    )


def _select(conn: sqlite3.Connection, where: str, args: Iterable[Any]) -> list[Upload]:
    cursor = conn.execute(f"SELECT {_COLUMNS} FROM uploads WHERE {where}", tuple(args))
    return [_row(r) for r in cursor.fetchall()]


class UploadStore:
    """
    Upload records, read and written on the database thread.  Every method
    returns a Deferred.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, upload: Upload) -> Deferred[None]:
        def work(conn: sqlite3.Connection) -> None:
            u = upload
            conn.execute(
                f"INSERT INTO uploads ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (u.id, u.owner, u.project, u.filename, u.filetype, u.length, u.offset,
                 u.raw_metadata, u.concat, json.dumps(list(u.parts)), u.state.value,
                 u.created, u.updated, u.expires, u.transferred, u.error),
            )

        return self._db.run(work)

    def get(self, upload_id: str) -> Deferred[Upload | None]:
        def work(conn: sqlite3.Connection) -> Upload | None:
            found = _select(conn, "id = ?", (upload_id,))
            return found[0] if found else None

        return self._db.read(work)

    def record_offset(
        self, upload_id: str, offset: int, now: float, expires: float | None
    ) -> Deferred[None]:
        """The spool now durably holds C{offset} bytes of an unfinished upload."""
        return self._update(upload_id, {"offset": offset, "updated": now, "expires": expires})

    def declare_length(self, upload_id: str, length: int, now: float) -> Deferred[None]:
        """A deferred-length upload learnt its length."""
        return self._update(upload_id, {"length": length, "updated": now})

    def mark_complete(
        self, upload_id: str, length: int, state: UploadState, now: float
    ) -> Deferred[None]:
        """Every byte is durably in the spool; the upload no longer expires."""
        changes = {"length": length, "offset": length, "state": state.value, "updated": now}
        return self._update(upload_id, {**changes, "expires": None})

    def set_state(
        self,
        upload_id: str,
        state: UploadState,
        now: float,
        transferred: int | None = None,
        error: str | None = None,
    ) -> Deferred[None]:
        """
        For the transfer stage: record where a staged upload is now (and how
        many bytes have reached the cloud, or why it failed).
        """
        changes: dict[str, Any] = {"state": state.value, "updated": now}
        if transferred is not None:
            changes["transferred"] = transferred
        if error is not None:
            changes["error"] = error
        return self._update(upload_id, changes)

    def record_transferred(self, upload_id: str, transferred: int, now: float) -> Deferred[None]:
        """For the transfer stage: progress of a transfer in flight."""
        return self._update(upload_id, {"transferred": transferred, "updated": now})

    def remove(self, upload_ids: Iterable[str]) -> Deferred[None]:
        ids = list(upload_ids)

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM uploads WHERE id = ?", [(i,) for i in ids])

        return self._db.run(work)

    def owned_by(self, owner: str, include_parts: bool = False) -> Deferred[list[Upload]]:
        where = "owner = ?" + ("" if include_parts else " AND concat != 'partial'")
        return self._db.read(lambda conn: _select(conn, where + " ORDER BY created DESC", (owner,)))

    def in_state(self, state: UploadState) -> Deferred[list[Upload]]:
        return self._db.read(
            lambda conn: _select(conn, "state = ? ORDER BY created", (state.value,))
        )

    def expired(self, now: float) -> Deferred[list[Upload]]:
        """Unfinished uploads (and unused parts) whose expiry has passed."""
        return self._db.read(
            lambda conn: _select(
                conn,
                "state = ? AND expires IS NOT NULL AND expires <= ?",
                (UploadState.RECEIVING.value, now),
            )
        )

    def unfinished(self, owner: str) -> Deferred[int]:
        """An owner's uploads still receiving (partial uploads included)."""
        return self._db.read(lambda conn: int(conn.execute(
            "SELECT count(*) FROM uploads WHERE owner = ? AND state = ?", (owner, UploadState.RECEIVING.value)
        ).fetchone()[0]))

    def held_bytes(self, owner: str) -> Deferred[int]:
        """
        Bytes an owner's uploads hold or have reserved in the spool: the
        declared length of each, or what arrived while it is deferred.
        """

        def work(conn: sqlite3.Connection) -> int:
            marks = ",".join("?" * len(HELD))
            row = conn.execute(
                f'SELECT COALESCE(SUM(COALESCE(length, "offset")), 0) FROM uploads '
                f"WHERE owner = ? AND state IN ({marks})",
                (owner, *(s.value for s in HELD)),
            ).fetchone()
            return int(row[0])

        return self._db.read(work)

    def _update(self, upload_id: str, changes: dict[str, Any]) -> Deferred[None]:
        assignments = ", ".join(f'"{k}" = ?' for k in changes)

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"UPDATE uploads SET {assignments} WHERE id = ?", (*changes.values(), upload_id)
            )

        return self._db.run(work)
