"""
The edge's log tails: each byte of a job's log held once, in order,
whatever order and however often the batches come; bounded; gaps waited
for, then given up on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relay.edge.events import EventHub
from relay.edge.jobs.live import JobLogReceiver
from relay.edge.jobs.tail import SCHEMA, Appended, LogTails
from relay.testing.db import SynchronousDatabase

JOB = "a" * 32
PROJECT = "b" * 32
LOG = b"".join(f"line {n:04d}\n".encode() for n in range(1000))  # 10,000 bytes


class TailTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = SynchronousDatabase(path, [SCHEMA])
        self.tails = LogTails(self.clock, limit=4096, gap_wait=10.0)

    def receive(self, offset: int, size: int, *, attempt: int = 1, eof: bool = False) -> list[Appended]:
        data = LOG[offset : offset + size]
        return self.db.run_now(self.tails.receive, JOB, PROJECT, attempt, offset, data, eof)

    def read(self, offset: int = 0) -> tuple[Any, bytes]:
        found = self.db.run_now(self.tails.read, JOB, offset)
        assert found is not None
        return found

    def test_in_order(self) -> None:
        told = self.receive(0, 100) + self.receive(100, 50)
        self.assertEqual([(a.offset, a.end) for a in told], [(0, 100), (100, 150)])
        held, data = self.read()
        self.assertEqual((held.start, held.end, held.eof, data), (0, 150, False, LOG[:150]))
        self.assertEqual(self.read(120)[1], LOG[120:150])
        self.assertEqual(self.read(150)[1], b"")

    def test_duplicate_and_overlap(self) -> None:
        self.receive(0, 100)
        self.assertEqual(self.receive(0, 100), [])
        self.assertEqual(self.receive(20, 30), [])
        [told] = self.receive(50, 100)  # half held already
        self.assertEqual((told.offset, told.data), (100, LOG[100:150]))
        self.assertEqual(self.read()[1], LOG[:150])

    def test_gap_waits_then_fills(self) -> None:
        self.receive(0, 100)
        self.assertEqual(self.receive(200, 100), [])  # 100..200 missing
        self.assertEqual(self.receive(300, 100), [])
        self.assertEqual(self.read()[0].end, 100)
        told = self.receive(100, 100)
        self.assertEqual([(a.offset, a.end) for a in told], [(100, 200), (200, 300), (300, 400)])
        self.assertEqual(self.read()[1], LOG[:400])
        self.assertEqual(self.db.run_now(lambda c: c.execute("SELECT count(*) FROM job_log_waiting").fetchone()[0]), 0)

    def test_gap_given_up_after_gap_wait(self) -> None:
        self.receive(0, 100)
        self.receive(200, 100)
        self.clock.advance(9)
        self.assertEqual(self.db.run_now(self.tails.tick), [])
        self.clock.advance(1)
        [told] = self.db.run_now(self.tails.tick)
        self.assertEqual((told.offset, told.end), (200, 300))
        held, data = self.read()
        self.assertEqual((held.start, held.end, data), (200, 300, LOG[200:300]))
        # The missing batch, late: below the tail's start now, dropped.
        self.assertEqual(self.receive(100, 100), [])
        self.assertEqual(self.receive(300, 10)[0].offset, 300)

    def test_gap_skipped_when_waiting_bytes_fill_the_tail(self) -> None:
        self.receive(0, 100)
        for offset in range(200, 200 + 40 * 100, 100):  # 4,000 bytes wait behind the gap
            self.assertEqual(self.receive(offset, 100), [])
        told = self.receive(4200, 100)  # 4,100: the gap fell out of the window, no reason to wait
        self.assertEqual((told[0].offset, told[-1].end, len(told)), (200, 4300, 41))
        held, data = self.read()
        self.assertEqual((held.start, held.end), (4300 - 4096, 4300))
        self.assertEqual(data, LOG[4300 - 4096 : 4300])
        self.assertEqual(self.receive(4300, 100)[0].offset, 4300)

    def test_bounded(self) -> None:
        for offset in range(0, len(LOG), 300):
            self.receive(offset, 300)
        held, data = self.read()
        self.assertEqual((held.start, held.end), (len(LOG) - 4096, len(LOG)))
        self.assertEqual(data, LOG[-4096:])
        stored = self.db.run_now(lambda c: c.execute("SELECT sum(length(data)) FROM job_log_chunks").fetchone()[0])
        self.assertLessEqual(stored, 4096 + 300)
        # Asking from before the tail: what is held, and where it starts.
        self.assertEqual(self.read(0)[1], LOG[-4096:])

    def test_attempts(self) -> None:
        self.receive(0, 500)
        [told] = self.receive(0, 40, attempt=2)
        self.assertEqual((told.attempt, told.offset, told.end), (2, 0, 40))
        held, data = self.read()
        self.assertEqual((held.attempt, held.end, data), (2, 40, LOG[:40]))
        self.assertEqual(self.receive(500, 100, attempt=1), [], "an older attempt's batch")
        self.assertEqual(self.read()[1], LOG[:40])

    def test_eof(self) -> None:
        self.receive(0, 100)
        [told] = self.receive(100, 0, eof=True)
        self.assertEqual((told.data, told.eof), (b"", True))
        self.assertTrue(self.read()[0].eof)
        self.assertEqual(self.receive(100, 0, eof=True), [], "eof twice")

    def test_a_first_batch_past_zero_waits(self) -> None:
        self.assertEqual(self.receive(100, 100), [])
        told = self.receive(0, 100)
        self.assertEqual([(a.offset, a.end) for a in told], [(0, 100), (100, 200)])


class TellingTests(SynchronousTestCase):
    """
    What the receiver tells the hub: each byte once, even when a batch is
    placed twice (an inbox group undone and applied again).
    """

    def test_each_byte_told_once(self) -> None:
        hub = EventHub()
        seen: list[Any] = []
        hub.subscribe("u", seen.append)
        receiver = JobLogReceiver(LogTails(Clock(), limit=4096, gap_wait=1.0), hub, lambda f, *a: f(*a))

        def tell(attempt: int, offset: int, size: int, eof: bool = False) -> None:
            receiver._publish([(["u"], Appended(JOB, PROJECT, attempt, offset, LOG[offset : offset + size], eof))], None)

        tell(1, 0, 100)
        tell(1, 0, 100)  # again
        tell(1, 50, 100)  # overlapping
        tell(1, 150, 0, eof=True)
        tell(1, 150, 0, eof=True)
        tell(2, 0, 10)
        tell(1, 150, 10)  # an older attempt
        self.assertEqual(
            [(e.data["attempt"], e.data["offset"], e.data["end"], e.data["eof"]) for e in seen],
            [(1, 0, 100, False), (1, 100, 150, False), (1, 150, 150, True), (2, 0, 10, False)],
        )
        self.assertEqual("".join(e.data["text"] for e in seen[:3]).encode(), LOG[:150])

    def test_characters_split_between_batches(self) -> None:
        hub = EventHub()
        seen: list[Any] = []
        hub.subscribe("u", seen.append)
        receiver = JobLogReceiver(LogTails(Clock(), limit=4096, gap_wait=1.0), hub, lambda f, *a: f(*a))
        text = "naïve 日本語 🙂 done\n".encode()
        at = 0
        for size in (3, 1, 6, 2, 3, 1, 2, 100):
            piece = text[at : at + size]
            receiver._publish([(["u"], Appended(JOB, PROJECT, 1, at, piece, at + size >= len(text)))], None)
            at += len(piece)
        self.assertEqual("".join(e.data["text"] for e in seen), text.decode())
        self.assertNotIn("\ufffd", "".join(e.data["text"] for e in seen))
        self.assertEqual([e.data["offset"] for e in seen[1:]], [e.data["end"] for e in seen[:-1]])
        self.assertEqual(seen[-1].data["end"], len(text))
        self.assertTrue(seen[-1].data["eof"])
