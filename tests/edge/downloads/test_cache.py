"""
The edge's file cache (L{relay.edge.downloads.cache.FileCache}) on a real
spool directory and SQLite, with a clock of the test's own and spool I/O
run inline: eviction order, pins, restarts, a flipped byte, uploads moved
in from the spool.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from relay.crypto import DecryptionError
from relay.edge.downloads.cache import SCHEMA, FileCache
from relay.edge.uploads.spool import Spool, SpoolError
from relay.testing.db import SynchronousDatabase

MIB = 1 << 20
KEY = b"k" * 32


def inline(f: Any, *args: Any) -> Any:
    return maybeDeferred(f, *args)


class CacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.clock = Clock()
        self.clock.advance(1000)
        self.db = SynchronousDatabase(self.root / "edge.db", [SCHEMA])
        self.spool = Spool(self.root / "spool", KEY)
        self.cache = self.make(100 * MIB)

    def make(self, capacity: int) -> FileCache:
        return FileCache(
            self.clock, self.db, self.spool.beside(self.root / "cache"), capacity, inline
        )

    async def put(self, file_id: str, size: int, cache: FileCache | None = None) -> bytes:
        cache = cache or self.cache
        data = os.urandom(size)
        cache.pin(file_id)
        _, writer = await cache.begin(
            file_id, size, hashlib.sha256(data).hexdigest(), "application/x-test"
        )
        writer.write(data)
        writer.finalize()
        writer.close()
        await cache.complete(file_id)
        cache.unpin(file_id)
        self.clock.advance(1)
        return data

    def held(self) -> list[str]:
        return sorted(row[0] for row in self.db.conn.execute("SELECT file_id FROM cache_files"))

    def read(self, file_id: str, cache: FileCache | None = None) -> bytes:
        cache = cache or self.cache
        store_id = self.db.conn.execute(
            "SELECT store_id FROM cache_files WHERE file_id = ?", (file_id,)
        ).fetchone()
        with cache.store.reader(store_id[0]) as reader:
            return reader.read(0, reader.length)

    async def test_the_least_recently_used_file_is_evicted_first(self) -> None:
        for name in "abc":
            await self.put(name, 30 * MIB)
        await self.cache.touch("a")  # a is now the most recent, b the least
        self.clock.advance(1)
        await self.put("d", 30 * MIB)
        self.assertEqual(self.held(), ["a", "c", "d"])
        await self.put("e", 60 * MIB)  # c (older), then a: 30 + 60 fit
        self.assertEqual(self.held(), ["d", "e"])
        self.assertEqual(self.cache.evictions, 3)
        stores = {self.store_of(f) for f in ("d", "e")}
        self.assertEqual({name.split(".")[0] for name in os.listdir(self.root / "cache")}, stores)

    def store_of(self, file_id: str) -> str:
        return self.db.conn.execute(
            "SELECT store_id FROM cache_files WHERE file_id = ?", (file_id,)
        ).fetchone()[0]

    async def test_a_file_being_read_is_never_evicted(self) -> None:
        a = await self.put("a", 60 * MIB)
        self.cache.pin("a")  # a reader holds it
        await self.put("b", 60 * MIB)
        self.assertEqual(
            self.held(), ["a", "b"], "a was pinned: over capacity rather than evicting it"
        )
        self.assertEqual(self.read("a"), a)
        self.cache.unpin("a")
        await self.cache.make_room(0)
        self.assertEqual(self.held(), ["b"])

    async def test_a_file_dropped_while_read_goes_when_the_reader_lets_go(self) -> None:
        await self.put("a", 2 * MIB)
        store_id = self.store_of("a")
        self.cache.pin("a")
        self.assertTrue(await self.cache.drop("a", "deleted"))
        self.assertTrue(self.cache.dropped(store_id))
        self.assertTrue((self.root / "cache" / f"{store_id}.data").exists())
        self.cache.unpin("a")
        self.assertFalse((self.root / "cache" / f"{store_id}.data").exists())

    async def test_a_restart_keeps_the_cache_and_forgets_what_lost_its_bytes(self) -> None:
        a = await self.put("a", 3 * MIB)
        await self.put("b", 1 * MIB)
        partial = self.cache
        partial.pin("c")
        _, writer = await partial.begin("c", 5 * MIB, "0" * 64, "")
        writer.write(b"x" * MIB)
        writer.flush(fsync=True)
        writer.close()
        orphan = self.spool.beside(self.root / "cache").create("stray")
        orphan.close()
        for ext in ("key", "data", "tail"):
            (self.root / "cache" / f"{self.store_of('b')}.{ext}").unlink()
        restarted = self.make(100 * MIB)
        fetching = await restarted.recover()
        self.assertEqual([e.file_id for e in fetching], ["c"])
        self.assertEqual(self.held(), ["a", "c"])
        self.assertEqual(self.read("a", restarted), a)
        self.assertFalse(restarted.store.exists("stray"))

    async def test_a_flipped_byte_on_disk_is_detected(self) -> None:
        await self.put("a", 3 * MIB)
        path = self.root / "cache" / f"{self.store_of('a')}.data"
        with open(path, "r+b") as f:
            f.seek(2 * MIB)
            byte = f.read(1)
            f.seek(2 * MIB)
            f.write(bytes([byte[0] ^ 1]))
        with self.assertRaises((SpoolError, DecryptionError)):
            self.read("a")

    async def test_an_upload_moves_in_from_the_spool_without_a_copy(self) -> None:
        data = os.urandom(3 * MIB + 5)
        writer = self.spool.create("upload1")
        writer.write(data)
        writer.finalize()
        writer.close()
        inode = os.stat(self.root / "spool" / "upload1.data").st_ino
        kept = await self.cache.adopt("file1", self.spool, "upload1", len(data), hashlib.sha256(data).hexdigest(),
                                      "text/plain")
        self.assertTrue(kept)
        self.assertFalse(self.spool.exists("upload1"))
        self.assertEqual(os.listdir(self.root / "spool"), [])
        self.assertEqual(os.stat(self.root / "cache" / "upload1.data").st_ino, inode)
        self.assertEqual(self.read("file1"), data)
        entry = await self.cache.get("file1")
        assert entry is not None
        self.assertEqual(
            (entry.state, entry.listed, entry.content_type), ("cached", False, "text/plain")
        )

    async def test_an_upload_larger_than_the_cache_is_not_kept(self) -> None:
        small = self.make(MIB)
        writer = self.spool.create("upload2")
        writer.write(b"y" * (2 * MIB))
        writer.finalize()
        writer.close()
        self.assertFalse(await small.adopt("file2", self.spool, "upload2", 2 * MIB, "0" * 64, ""))
        self.assertTrue(self.spool.exists("upload2"))
