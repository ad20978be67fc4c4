"""
A part's body streamed from the spool (back-pressure, stopping mid-read,
short reads), the bandwidth cap, and the presigned URL book.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relay.edge.transfer.body import PartBody, Throttle
from relay.edge.transfer.urls import UrlBook, redact
from relay.edge.uploads.spool import Spool


class Consumer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))


class PartBodyTests(SynchronousTestCase):
    def body(self, blocks: list[bytes], length: int, clock: Clock | None = None,
             throttle: Throttle | None = None) -> tuple[PartBody, list[Deferred[bytes]], list[int]]:
        reads: list[Deferred[bytes]] = []
        closed: list[int] = []

        def read_next() -> Deferred[bytes]:
            d: Deferred[bytes] = Deferred()
            reads.append(d)
            return d

        body = PartBody(clock or Clock(), length, read_next, lambda: closed.append(1), throttle)
        self._blocks = blocks
        return body, reads, closed

    def test_back_pressure(self) -> None:
        """
        Nothing is written while the connection has paused the body; one
        block is read at a time.
        """
        body, reads, closed = self.body([], 6)
        consumer = Consumer()
        done = body.startProducing(consumer)
        self.assertEqual(len(reads), 1)
        body.pauseProducing()
        reads[0].callback(b"abc")
        self.assertEqual(consumer.writes, [])
        self.assertEqual(len(reads), 1)
        body.resumeProducing()
        self.assertEqual(consumer.writes, [b"abc"])
        self.assertEqual(len(reads), 2)
        reads[1].callback(b"def")
        self.assertEqual(consumer.writes, [b"abc", b"def"])
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(closed, [1])

    def test_stop_during_a_read(self) -> None:
        """
        stopProducing while a block is being read: the reader is released
        only when that read is over (its thread still uses it), and the
        Deferred never fires.
        """
        body, reads, closed = self.body([], 6)
        done = body.startProducing(Consumer())
        body.stopProducing()
        self.assertEqual(closed, [])
        reads[0].callback(b"abc")
        self.assertEqual(closed, [1])
        self.assertNoResult(done)

    def test_short_spool(self) -> None:
        body, reads, closed = self.body([], 6)
        done = body.startProducing(Consumer())
        reads[0].callback(b"abc")
        reads[1].callback(b"")
        self.failureResultOf(done, EOFError)
        self.assertEqual(closed, [1])

    def test_reads_a_real_spool_part(self) -> None:
        """
        The part of a spool file between two offsets, segment by segment.
        """
        spool = Spool(Path(self.mktemp()), b"k" * 32, segment_size=64)
        writer = spool.create("f1")
        data = bytes(range(256)) * 3
        writer.write(data)
        writer.finalize()
        writer.close()
        reader = spool.reader("f1")
        blocks = reader.blocks(128, 300)
        body = PartBody(Clock(), 300, lambda: succeed(next(blocks, b"")), reader.close)
        consumer = Consumer()
        self.successResultOf(body.startProducing(consumer))
        self.assertEqual(b"".join(consumer.writes), data[128:428])
        self.assertTrue(all(len(w) <= 64 for w in consumer.writes))


class ThrottleTests(SynchronousTestCase):
    def test_paces_everyone_together(self) -> None:
        clock = Clock()
        throttle = Throttle(clock, rate=1000, burst=0.1)
        granted: list[float] = []
        for _ in range(10):
            throttle.take(500).addCallback(lambda _: granted.append(clock.seconds()))
        for _ in range(60):
            clock.advance(0.1)
        # 5000 bytes at 1000 B/s: the last 500 go once 4500 are paid for,
        # less the burst allowance.
        self.assertEqual(len(granted), 10)
        self.assertTrue(4.3 <= granted[-1] <= 4.45, granted)
        self.assertEqual(granted[0], 0)

    def test_no_limit(self) -> None:
        throttle = Throttle(Clock(), None)
        self.successResultOf(throttle.take(10**9))

    def test_throttled_body_writes_slices(self) -> None:
        clock = Clock()
        throttle = Throttle(clock, rate=64 * 1024, burst=0)
        block = b"x" * (256 * 1024)
        body = PartBody(clock, len(block), lambda: succeed(block), lambda: None, throttle)
        consumer = Consumer()
        done = body.startProducing(consumer)
        for _ in range(30):
            clock.advance(0.05)
        self.assertLess(sum(map(len, consumer.writes)), 3 * 64 * 1024)
        for _ in range(60):
            clock.advance(0.05)
        self.successResultOf(done)
        self.assertEqual(b"".join(consumer.writes), block)


class UrlBookTests(SynchronousTestCase):
    def book(self, upcoming: list[int] | None = None, **kwargs: Any) -> tuple[UrlBook, Clock, list[list[int]]]:
        clock = Clock()
        asked: list[list[int]] = []
        book = UrlBook(clock, asked.append, lambda: iter(upcoming or []), **kwargs)
        return book, clock, asked

    def test_misses_are_asked_together(self) -> None:
        book, clock, asked = self.book(upcoming=[1, 2, 3, 4, 5, 6], batch=4)
        d1, d2 = book.get(2), book.get(1)
        self.assertEqual(asked, [])
        clock.advance(0)
        self.assertEqual(asked, [[1, 2, 3, 4]])
        book.add({1: "u1", 2: "u2", 3: "u3", 4: "u4"}, expires_in=3600)
        self.assertEqual((self.successResultOf(d1), self.successResultOf(d2)), ("u2", "u1"))
        self.assertEqual(self.successResultOf(book.get(3)), "u3")
        clock.advance(0)
        self.assertEqual(len(asked), 1)

    def test_urls_near_expiry_are_renewed(self) -> None:
        book, clock, asked = self.book()
        book.add({1: "old"}, expires_in=100)
        clock.advance(74)
        self.assertEqual(self.successResultOf(book.get(1)), "old")
        clock.advance(2)  # within a quarter of its life from expiry
        d = book.get(1)
        clock.advance(0)
        self.assertEqual(asked, [[1]])
        book.add({1: "new"}, expires_in=100)
        self.assertEqual(self.successResultOf(d), "new")

    def test_margin_is_capped(self) -> None:
        book, clock, asked = self.book(margin_cap=60)
        book.add({1: "u"}, expires_in=3600)
        clock.advance(3600 - 61)
        self.assertTrue(book.has_usable(1))
        clock.advance(2)
        self.assertFalse(book.has_usable(1))

    def test_invalidated_url_is_not_handed_out(self) -> None:
        book, clock, asked = self.book()
        book.add({1: "bad"}, expires_in=3600)
        book.invalidate(1, "bad")
        d = book.get(1)
        clock.advance(0)
        self.assertEqual(asked, [[1]])
        book.invalidate(1, "something else")  # an older URL: nothing to do
        book.add({1: "good"}, 3600)
        self.assertEqual(self.successResultOf(d), "good")

    def test_unanswered_requests_are_asked_again(self) -> None:
        book, clock, asked = self.book(reask_after=30)
        d = book.get(7)
        clock.advance(0)
        again = book.get(7)
        clock.advance(0)
        self.assertEqual(asked, [[7]])
        clock.advance(30)
        self.assertEqual(asked, [[7], [7]])
        book.close()
        self.failureResultOf(d)
        self.failureResultOf(again)

    def test_redact(self) -> None:
        url = ("https://bucket.s3.amazonaws.com/projects/p/files/f?uploadId=u&partNumber=1"
               "&X-Amz-Credential=AKIAEXAMPLE%2F20260101&X-Amz-Signature=abc")
        self.assertEqual(redact(url), "https://bucket.s3.amazonaws.com/projects/p/files/f?…")
        self.assertNotIn("AKIA", redact(url))
