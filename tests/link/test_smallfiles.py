"""
Small files over AMQP: 200 files of 1 B to 4 MiB of random bytes cross the
real broker while the link is reset and connections are killed, and arrive
with identical sha256; chunks in any order reassemble; stale partial files
are removed.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from relay.db import Database, connect, migrate, transaction
from relay.health import Health
from relay.link import inbox, outbox, smallfiles
from relay.link.backoff import Backoff
from relay.link.bridge import Bridge
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope
from relay.metrics import Metrics
from relay.testing.linkemu import LinkEmulator, LinkProfile

from ._broker import PORT, close_connections_named, rabbitmqctl, sleep, unique


def random_files(rng: random.Random, count: int) -> dict[str, bytes]:
    files = {}
    for n in range(count):
        # Log-uniform sizes from 1 B to 4 MiB, and both extremes for sure.
        size = 1 if n == 0 else 4 * 1024 * 1024 if n == 1 else int(2 ** rng.uniform(0, 22))
        files[f"file-{n:03d}"] = rng.randbytes(size)
    return files


class SmallFilesOverTheLinkTests(unittest.TestCase):
    timeout = 240

    async def test_two_hundred_files_under_faults(self) -> None:
        tmp = Path(self.mktemp())
        tmp.mkdir(parents=True)
        rng = random.Random(4242)
        files = random_files(rng, 200)
        queue_in, queue_out = unique("files-in"), unique("files-out")
        # A capped link, so that the faults land while files are in flight.
        emulator = LinkEmulator(
            reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{PORT}",
            LinkProfile(rate_bytes_per_s=4 * 1024 * 1024),
        )
        await emulator.start()
        self.addCleanup(emulator.stop)

        def side(name: str, url: str, consume: str, peer: str) -> tuple[Database, Bridge]:
            db = Database(reactor, tmp / f"{name}.db", [outbox.SCHEMA, inbox.SCHEMA, smallfiles.SCHEMA])
            catalogue = Catalogue()
            smallfiles.register_types(catalogue)
            metrics = Metrics()
            bridge = Bridge(
                reactor, db, metrics, Health(reactor, name, metrics), catalogue,
                url=url, heartbeat=2, source=name, consume=consume, declare=[peer],
                backoff=Backoff(reactor, initial=0.05, cap=0.5), connection_name=name,
            )
            db.startService()
            bridge.startService()
            self.addCleanup(db.stopService)
            self.addCleanup(bridge.stopService)
            return db, bridge

        sender_name, receiver_name = unique("sender"), unique("receiver")
        sender_db, sender = side(
            sender_name, f"amqp://guest:guest@127.0.0.1:{emulator.port}/", queue_out, queue_in
        )
        receiver_db, receiver = side(
            receiver_name, f"amqp://guest:guest@127.0.0.1:{PORT}/", queue_in, queue_out
        )
        completed: list[str] = []
        assembler = smallfiles.SmallFileAssembler(
            tmp / "received", reactor, lambda conn, f: completed.append(f.file_id)
        )
        receiver.inbox.register(smallfiles.CHUNK_TYPE, assembler.handle)
        self.addCleanup(lambda: rabbitmqctl("delete_queue", queue_in))
        self.addCleanup(lambda: rabbitmqctl("delete_queue", queue_out))

        items = list(files.items())
        for start in range(0, len(items), 20):
            def put_some(conn: sqlite3.Connection, batch=items[start : start + 20]) -> None:
                for file_id, data in batch:
                    smallfiles.put_file(sender.outbox, conn, file_id, data, to=queue_in)

            await sender_db.run(put_some)
            sender.outbox.wake()

        faults = 0
        for _ in range(600):
            if len(set(completed)) == len(files):
                break
            await sleep(rng.uniform(0.3, 1.5) if faults < 12 else 0.5)
            if faults < 12:
                if faults % 2:
                    emulator.reset_all()
                else:
                    await close_connections_named(rng.choice([sender_name, receiver_name]))
                faults += 1
        self.assertEqual(sorted(set(completed)), sorted(files))
        self.assertEqual(len(completed), len(files), "a file completed twice")
        for file_id, data in files.items():
            received = (tmp / "received" / file_id).read_bytes()
            self.assertEqual(hashlib.sha256(received).hexdigest(), hashlib.sha256(data).hexdigest(), file_id)
        self.assertEqual(list((tmp / "received").glob("*.part")), [])
        self.assertGreater(sender.link.health.reconnects + receiver.link.health.reconnects, 0)


def chunks_of(file_id: str, data: bytes, chunk_size: int = smallfiles.MIN_CHUNK) -> list[Envelope]:
    class Capture:
        def __init__(self) -> None:
            self.messages: list[Envelope] = []

        def put(self, conn: object, type: str, body: dict, *, to: str, payload: bytes) -> None:
            self.messages.append(Envelope(type, "test", 0.0, body, payload=payload))

    capture = Capture()
    smallfiles.put_file(capture, None, file_id, data, to="q", chunk_size=chunk_size)  # type: ignore[arg-type]
    return capture.messages


@pytest.fixture
def assembler_db(tmp_path: Path) -> tuple[smallfiles.SmallFileAssembler, sqlite3.Connection, Clock]:
    conn = connect(tmp_path / "db")
    migrate(conn, smallfiles.SCHEMA)
    clock = Clock()
    return smallfiles.SmallFileAssembler(tmp_path / "files", clock, partial_timeout=60), conn, clock


def test_any_order_reassembles(assembler_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assembler, conn, _ = assembler_db
    data = random.Random(1).randbytes(5 * smallfiles.MIN_CHUNK + 17)
    messages = chunks_of("f", data)
    random.Random(2).shuffle(messages)
    for message in messages + messages[:2]:  # duplicates too
        transaction(conn, assembler.handle, message)
    assert (tmp_path / "files" / "f").read_bytes() == data


def test_corrupt_file_is_not_kept(assembler_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assembler, conn, _ = assembler_db
    messages = chunks_of("f", b"x" * 100)
    bad = Envelope(messages[0].type, "t", 0.0, messages[0].body, payload=b"y" * 100)
    transaction(conn, assembler.handle, bad)
    assert not (tmp_path / "files" / "f").exists()
    assert conn.execute("SELECT state FROM smallfile").fetchone()[0] == "corrupt"


def test_chunk_that_does_not_fit_is_refused(assembler_db) -> None:  # type: ignore[no-untyped-def]
    assembler, conn, _ = assembler_db
    [message] = chunks_of("f", b"abc")
    wrong = Envelope(message.type, "t", 0.0, message.body, payload=b"abcd")
    with pytest.raises(ValueError, match="does not fit"):
        transaction(conn, assembler.handle, wrong)


def test_stale_partial_files_expire(assembler_db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assembler, conn, clock = assembler_db
    messages = chunks_of("f", b"z" * (3 * smallfiles.MIN_CHUNK))
    transaction(conn, assembler.handle, messages[0])
    assert (tmp_path / "files" / "f.part").exists()
    clock.advance(30)
    assert transaction(conn, assembler.expire) == []
    clock.advance(31)
    assert transaction(conn, assembler.expire) == ["f"]
    assert not (tmp_path / "files" / "f.part").exists()


def test_not_a_small_file() -> None:
    with pytest.raises(ValueError, match="not a small file"):
        smallfiles.put_file(None, None, "f", b"x" * (smallfiles.MAX_SIZE + 1), to="q")  # type: ignore[arg-type]

