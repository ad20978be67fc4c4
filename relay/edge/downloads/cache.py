"""
The edge's file cache: stored files held here, encrypted at rest, so that
people download them at local speed.

The bytes are spool files (L{relay.edge.uploads.spool}: the same format,
AES-256-GCM segments under per-file keys wrapped by the edge's master key)
in their own directory; C{cache_files} in the edge's database says which
file each holds, its size, sha256 and content type, whether it is complete
(C{cached}) or still arriving (C{fetching}), and when it was last used.

A file becomes C{cached} only after every byte was written and the whole
plaintext hashed to the registry's sha256 (L{relay.edge.downloads.fetch});
from then on each segment's authentication tag proves its bytes on every
read, so a flipped byte on disk is detected, never served, and the copy
dropped.  A file uploaded at this edge joins the cache when the cloud has
registered it, by moving its spool file here instead of erasing it.

The cache keeps under C{capacity} bytes by evicting the least recently
used complete files, never one that is being served or fetched (those are
pinned, in memory: a restart unpins everything).  A file dropped while
pinned (deleted, found corrupt) disappears from the table at once and its
bytes once the last reader lets go.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from relay.db import Database, Schema
from relay.edge.uploads.spool import Spool, SpoolWriter
from relay.threads import Blocking

SCHEMA = Schema(
    "downloads",
    [
        """
        CREATE TABLE cache_files (
            file_id TEXT PRIMARY KEY,
            store_id TEXT NOT NULL UNIQUE,
            size BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            content_type TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('fetching', 'cached')),
            fetched BIGINT NOT NULL DEFAULT 0,
            listed INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            last_used DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX cache_files_lru ON cache_files (state, last_used);
        CREATE TABLE cache_inbound (
            file_id TEXT PRIMARY KEY,
            size BIGINT NOT NULL,
            sha256 TEXT NOT NULL,
            content_type TEXT NOT NULL,
            data BLOB NOT NULL,
            received_at DOUBLE PRECISION NOT NULL
        );
        """,
    ],
)

FETCHING = "fetching"
CACHED = "cached"

@dataclass(frozen=True)
class Entry:
    """One row of C{cache_files}."""

    file_id: str
    store_id: str
    size: int
    sha256: str
    content_type: str
    state: str
    fetched: int
    last_used: float
    #: The replica has listed the file (an upload joins the cache before
    #: the replica hears of it: its absence then is no deletion).
    listed: bool
    created_at: float

    @property
    def complete(self) -> bool:
        return self.state == CACHED


def _entry(row: Any) -> Entry:
    return Entry(
        row["file_id"],
        row["store_id"],
        int(row["size"]),
        row["sha256"],
        row["content_type"],
        row["state"],
        int(row["fetched"]),
        float(row["last_used"]),
        bool(row["listed"]),
        float(row["created_at"]),
    )


_COLUMNS = (
    "file_id, store_id, size, sha256, content_type, state, fetched, last_used, listed, created_at"
)


def entry_of(conn: Any, file_id: str) -> Entry | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM cache_files WHERE file_id = ?", (file_id,)
    ).fetchone()
    return None if row is None else _entry(row)


def entries(conn: Any) -> list[Entry]:
    return [_entry(row) for row in conn.execute(f"SELECT {_COLUMNS} FROM cache_files")]


class FileCache:
    """
    See the module docstring.

    @param store: the spool directory holding the cached bytes.
    @param capacity: bytes the cache may hold.
    @param blocking: runs spool I/O off the reactor thread.
    """

    log = Logger()

    def __init__(
        self, clock: Any, db: Database, store: Spool, capacity: int, blocking: Blocking
    ) -> None:
        self._clock = clock
        self._db = db
        self.store = store
        self.capacity = capacity
        self._blocking = blocking
        self._pins: dict[str, int] = {}
        #: Store ids dropped while pinned: erased when the last pin goes.
        self._doomed: dict[str, str] = {}
        self.evictions = 0

    # -- reading the table -----------------------------------------------------

    def get(self, file_id: str) -> Deferred[Entry | None]:
        return self._db.read(entry_of, file_id)

    def used(self) -> Deferred[int]:
        return self._db.read(_used)

    # -- pins -------------------------------------------------------------------

    def pin(self, file_id: str) -> None:
        """A reader or the fetch uses C{file_id}: it is not evicted."""
        self._pins[file_id] = self._pins.get(file_id, 0) + 1

    def unpin(self, file_id: str) -> None:
        left = self._pins.get(file_id, 0) - 1
        if left > 0:
            self._pins[file_id] = left
            return
        self._pins.pop(file_id, None)
        store_id = self._doomed.pop(file_id, None)
        if store_id is not None:
            self._erase_later(store_id)

    def pinned(self, file_id: str) -> bool:
        return file_id in self._pins

    def dropped(self, store_id: str) -> bool:
        """Whether the store file was dropped while pinned (its readers stop)."""
        return store_id in self._doomed.values()

    # -- changes ----------------------------------------------------------------

    async def begin(
        self, file_id: str, size: int, sha256: str, content_type: str, *, listed: bool = True
    ) -> tuple[Entry, SpoolWriter]:
        """
        Make room, then start holding C{file_id}: a new, empty store file
        and its row in state C{fetching}.  Fires with the row and the
        writer.  The caller has pinned C{file_id}.  C{listed}: whether the
        replica lists the file already (not so for a result that came
        with its registration).
        """
        await self.make_room(size)
        store_id = os.urandom(16).hex()
        writer = await self._blocking(self.store.create, store_id)
        now = self._clock.seconds()
        try:
            await self._db.run(
                _insert, file_id, store_id, size, sha256, content_type, FETCHING, 0, now, listed
            )
        except BaseException:
            await self._blocking(_close_and_erase, self.store, writer, store_id)
            raise
        return Entry(
            file_id, store_id, size, sha256, content_type, FETCHING, 0, now, listed, now
        ), writer

    def progress(self, file_id: str, fetched: int) -> Deferred[None]:
        """Record how far a fetch got (for the API and after a restart)."""
        return self._db.run(_set, "fetched = ?", file_id, fetched)

    def complete(self, file_id: str) -> Deferred[None]:
        """Every byte is here and hashed right: the file is C{cached}."""
        return self._db.run(
            _set, "state = 'cached', fetched = size, last_used = ?", file_id, self._clock.seconds()
        )

    def listed(self, file_ids: list[str]) -> Deferred[None]:
        """The replica lists these files: from now on their absence is a deletion."""
        return self._db.run(_mark_listed, file_ids)

    def touch(self, file_id: str) -> Deferred[None]:
        """The file was just served: it is the most recently used."""
        return self._db.run(_set, "last_used = ?", file_id, self._clock.seconds())

    async def drop(self, file_id: str, why: str) -> bool:
        """
        Forget C{file_id} (deleted, corrupt, a failed fetch): the row goes
        now, the bytes now or when its last reader lets go.  Returns
        whether there was anything to drop.
        """
        entry = await self._db.run(_remove, file_id)
        if entry is None:
            return False
        self.log.info("cache: dropped file {file_id} ({why})", file_id=file_id, why=why)
        if self.pinned(file_id):
            self._doomed[file_id] = entry.store_id
        else:
            await self._blocking(self.store.erase, entry.store_id)
        return True

    async def adopt(
        self, file_id: str, spool: Spool, spool_id: str, size: int, sha256: str, content_type: str
    ) -> bool:
        """
        Take a complete spool file (an upload the cloud has registered)
        into the cache, by renaming its files (no byte is copied or
        decrypted).  Fires with C{False} when it cannot be moved (another
        filesystem, no room even after eviction): then it is not cached.
        """
        if size > self.capacity:
            return False
        await self.make_room(size)
        try:
            await self._blocking(spool.move, spool_id, self.store)
        except OSError as e:
            self.log.warn(
                "cache: could not take upload {file_id} from the spool: {error}",
                file_id=file_id,
                error=e,
            )
            return False
        now = self._clock.seconds()
        await self._db.run(
            _insert, file_id, spool_id, size, sha256, content_type, CACHED, size, now, False
        )
        return True

    async def make_room(self, size: int) -> bool:
        """
        Evict the least recently used complete, unpinned files until
        C{size} more bytes fit.  Fires with whether they fit.
        """
        rows = await self._db.read(entries)
        used = sum(e.size for e in rows)
        victims = sorted(
            (e for e in rows if e.complete and not self.pinned(e.file_id)),
            key=lambda e: e.last_used,
        )
        for victim in victims:
            if used + size <= self.capacity:
                break
            if await self.drop(victim.file_id, "evicted: least recently used"):
                self.evictions += 1
                used -= victim.size
        return used + size <= self.capacity

    async def fits_free(self, size: int) -> bool:
        """Whether C{size} bytes fit without evicting anything."""
        return await self.used() + size <= self.capacity

    async def recover(self) -> list[Entry]:
        """
        After a restart: forget rows whose bytes are gone, erase store
        files no row names.  Fires with the entries still C{fetching}.
        """
        rows = await self._db.read(entries)
        on_disk = set(await self._blocking(self.store.list_ids))
        for entry in rows:
            if entry.store_id not in on_disk:
                await self._db.run(_remove, entry.file_id)
                self.log.warn(
                    "cache: the bytes of file {file_id} are gone; forgotten", file_id=entry.file_id
                )
        known = {e.store_id for e in rows}
        for store_id in on_disk - known:
            await self._blocking(self.store.erase, store_id)
        await self._blocking(self.store.remove_orphans)
        return [e for e in rows if e.store_id in on_disk and not e.complete]

    def _erase_later(self, store_id: str) -> None:
        d = self._blocking(self.store.erase, store_id)
        d.addErrback(
            lambda f: self.log.failure("cache: could not erase {store_id}", f, store_id=store_id)
        )


def _insert(
    conn: Any,
    file_id: str,
    store_id: str,
    size: int,
    sha256: str,
    content_type: str,
    state: str,
    fetched: int,
    now: float,
    listed: bool,
) -> None:
    conn.execute(
        "INSERT INTO cache_files (file_id, store_id, size, sha256, content_type, state, fetched, listed, "
        "created_at, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (file_id, store_id, size, sha256, content_type, state, fetched, int(listed), now, now),
    )


def _mark_listed(conn: Any, file_ids: list[str]) -> None:
    conn.executemany(
        "UPDATE cache_files SET listed = 1 WHERE file_id = ?", [(f,) for f in file_ids]
    )


def _used(conn: Any) -> int:
    return int(conn.execute("SELECT COALESCE(SUM(size), 0) FROM cache_files").fetchone()[0])


def _set(conn: Any, assignment: str, file_id: str, value: Any) -> None:
    conn.execute(f"UPDATE cache_files SET {assignment} WHERE file_id = ?", (value, file_id))


def _remove(conn: Any, file_id: str) -> Entry | None:
    entry = entry_of(conn, file_id)
    if entry is not None:
        conn.execute("DELETE FROM cache_files WHERE file_id = ?", (file_id,))
    return entry


def _close_and_erase(store: Spool, writer: SpoolWriter, store_id: str) -> None:
    try:
        writer.close()
    finally:
        store.erase(store_id)
