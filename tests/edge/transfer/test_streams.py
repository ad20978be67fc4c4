"""
The tus path's sender with a clock and an in-memory receiver
(L{relay.testing.transfer.FakeTusTarget}): every range arrives and the
final upload lists them in order; a reset resumes from the receiver's
offset; a refused token is replaced; the stream count grows while the
rate grows and steps back when it does not.
"""

from __future__ import annotations

import base64
import hashlib

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relay.edge.transfer.body import PartBody
from relay.edge.transfer.journal import JournalPart
from relay.edge.transfer.planner import Part
from relay.edge.transfer.streams import (
    ReceiverAccess,
    StreamCount,
    StreamMemory,
    StreamSender,
    StreamStats,
    ranges,
)
from relay.edge.transfer.tus_client import ITusTarget
from relay.testing.reactor import reactor_for
from relay.testing.transfer import CappedTusTarget, FakeTusTarget

PART = 1000
DATA = bytes(range(256)) * 20  # 5120 bytes: 6 parts, the last short
URL = "http://receiver.test/transfers/" + "a" * 32 + "/"


def parts() -> list[JournalPart]:
    out = []
    for n, offset in enumerate(range(0, len(DATA), PART), start=1):
        chunk = DATA[offset:offset + PART]
        out.append(JournalPart(n, offset, len(chunk), base64.b64encode(hashlib.md5(chunk).digest()).decode(),
                               False))
    return out


class Streams(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = reactor_for(self)
        self.target = FakeTusTarget(token="t1")
        self.asked = 0
        self.access = ReceiverAccess(self.clock, self.ask, request_timeout=30)
        self.confirmed: list[tuple[int, int, int]] = []
        self.stats = StreamStats()

    async def ask(self) -> None:
        self.asked += 1
        self.clock.callLater(0.3, self.access.authorized, self.target.token, URL, 900)

    def body(self, part: Part) -> PartBody:
        blocks = iter([DATA[part.offset:part.offset + part.size]])
        return PartBody(self.clock, part.size, lambda: succeed(next(blocks, b"")), lambda: None)

    async def confirm(self, first: int, last: int, upto: int) -> None:
        self.confirmed.append((first, last, upto))

    def sender(self, per_range: int = 256) -> StreamSender:
        every = ranges(parts(), most=per_range)
        return StreamSender(self.clock, self.target, self.access, list(every), every, StreamCount(2, 4),
                            self.body, self.confirm, self.stats, stall_timeout=5.0)

    def drive(self, sender: StreamSender) -> Deferred[str]:
        d = Deferred.fromCoroutine(sender.run())
        for _ in range(200):
            if d.called:
                break
            self.clock.advance(0.5)
        return d

    def test_the_fake_is_a_target(self) -> None:
        self.assertTrue(verifyObject(ITusTarget, self.target))

    def test_every_range_arrives_and_the_final_lists_them_in_order(self) -> None:
        self.assertEqual(self.successResultOf(self.drive(self.sender())), "done")
        joined = b"".join(bytes(self.target.partials[f"{URL}{n}"]) for n in range(1, 7))
        self.assertEqual(joined, DATA)
        self.assertEqual(self.target.final, "final;" + " ".join(
            f"/transfers/{'a' * 32}/{n}" for n in range(1, 7)))
        self.assertEqual(self.asked, 1)
        self.assertIn((6, 6, len(DATA)), self.confirmed)
        self.assertEqual(self.stats.resent_confirmed, 0)

    def test_a_reset_resumes_from_the_receivers_offset(self) -> None:
        self.target.cut_after = 300
        self.assertEqual(self.successResultOf(self.drive(self.sender(per_range=2))), "done")
        first = f"{URL}1"
        # Three parts per range: the cut PATCH kept 300 bytes, HEAD said so,
        # the next PATCH started there.
        patches = [offset for method, url, offset in self.target.log if method == "PATCH" and url == first]
        self.assertEqual(patches, [0, 300])
        self.assertEqual(bytes(self.target.partials[first]), DATA[:3 * PART])
        self.assertGreaterEqual(self.stats.resumes, 1)
        self.assertEqual(b"".join(bytes(self.target.partials[f"{URL}{n}"]) for n in (1, 4)), DATA)

    def test_a_refused_token_is_replaced(self) -> None:
        self.assertEqual(self.successResultOf(self.drive(self.sender(per_range=1))), "done")
        self.target.token = "t2"
        self.target.final = None
        self.target.partials.clear()
        sender = self.sender(per_range=1)
        self.assertEqual(self.successResultOf(self.drive(sender)), "done")
        self.assertEqual(self.asked, 2)
        self.assertEqual(bytes(self.target.partials[f"{URL}1"]), DATA)


class Count(SynchronousTestCase):
    def test_grows_while_the_rate_grows_and_steps_back(self) -> None:
        count = StreamCount(2, 16)
        sent = 0

        def window(rate: float, busy: int) -> int:
            nonlocal sent
            sent += int(rate * 2)
            return count.sample(sent, 2.0, busy)

        self.assertEqual(window(1000, 2), 4)     # the first window: grow
        self.assertEqual(window(1000, 4), 4)     # the new streams are not counted yet: wait
        self.assertEqual(window(2000, 4), 8)     # twice the streams, twice the rate: grow
        self.assertEqual(window(2000, 8), 8)
        self.assertEqual(window(2050, 8), 4)     # no gain from 8: back to 4
        self.assertEqual(window(2000, 4), 4)
        self.assertEqual(window(2000, 3), 4)     # not all busy: no growth

    def test_probes_down_and_keeps_fewer_that_carry_as_much(self) -> None:
        count = StreamCount(4, 64, start=64)
        sent = 0

        def window(rate: float, busy: int) -> int:
            nonlocal sent
            sent += int(rate * 2)
            return count.sample(sent, 2.0, busy)

        for _ in range(3):
            self.assertEqual(window(8000, 64), 64)   # steady at the bound
        self.assertEqual(window(8000, 64), 48)       # the fourth: a probe down
        self.assertEqual(count.settled, 64)          # on trial
        self.assertEqual(window(8000, 64), 48)       # judged a window later ...
        self.assertEqual(window(8000, 60), 48)       # ... and once those above 48 have ended
        self.assertEqual(window(8000, 48), 48)       # as much with fewer: kept
        self.assertEqual(count.settled, 48)
        for _ in range(3):
            window(8000, 48)
        self.assertEqual(window(8000, 48), 60)       # the next probe goes up
        window(8000, 60)
        self.assertEqual(window(8100, 60), 48)       # no gain: back
        for _ in range(3):
            window(8000, 48)
        self.assertEqual(window(8000, 48), 36)       # down again
        window(8000, 48)
        self.assertEqual(window(6000, 36), 48)       # fewer carried less: back to more

    def test_no_growth_without_a_measurement(self) -> None:
        count = StreamCount(2, 16)
        self.assertEqual(count.sample(0, 2.0, 2), 2)
        self.assertEqual(count.measured, 1)

    def test_starts_where_told_within_bounds(self) -> None:
        self.assertEqual(StreamCount(4, 64, start=32).limit, 32)
        self.assertEqual(StreamCount(4, 12, start=32).limit, 12)
        self.assertEqual(StreamCount(4, 12, start=1).limit, 4)

    def test_the_memory_keeps_the_settled_count_of_a_measured_transfer(self) -> None:
        memory = StreamMemory(32)
        short = StreamCount(4, 64, start=memory.start)
        short.sample(1000, 2.0, 1)           # one range: never all busy
        memory.remember(short)
        self.assertEqual(memory.start, 32)   # nothing learnt
        count = StreamCount(4, 64, start=memory.start)
        count.sample(64_000, 2.0, 32)        # grows to 64, on trial
        self.assertEqual(count.limit, 64)
        self.assertEqual(count.settled, 32)
        count.sample(128_000, 2.0, 64)       # the waiting window
        count.sample(192_000, 2.0, 64)       # 64 brought nothing: back to 32
        self.assertEqual(count.limit, 32)
        memory.remember(count)
        self.assertEqual(memory.start, 32)
        count = StreamCount(4, 64, start=16)
        for sent, busy in ((32_000, 16), (64_000, 32), (128_000, 32), (192_000, 32)):
            count.sample(sent, 2.0, busy)    # 16 -> 32 doubled the rate: kept
        memory.remember(count)
        self.assertEqual(memory.start, 32)

    def test_stays_within_bounds(self) -> None:
        count = StreamCount(3, 5)
        sent = 0
        for rate in (1000, 3000, 9000, 27000):
            sent += rate * 2
            self.assertLessEqual(count.sample(sent, 2.0, 99), 5)
        self.assertGreaterEqual(count.limit, 3)




class ThroughALink(SynchronousTestCase):
    """
    The sender against a receiver behind a capped link
    (L{CappedTusTarget}): 500 bytes a second per stream, and buffers that
    take 30 % of a 5,000-byte part at once (as the emulated link's do of a
    5 MiB part with the streams' send buffers bounded).
    """

    RATE = 500.0

    def run_over(self, parts_count: int, aggregate: float, start: int,
                 memory: StreamMemory | None = None) -> tuple[float, CappedTusTarget, StreamCount]:
        clock = reactor_for(self)
        target = CappedTusTarget(clock, self.RATE, aggregate, buffer=1500, token="t")
        async def ask() -> None:
            clock.callLater(0.3, access.authorized, "t", URL, 9000)

        access = ReceiverAccess(clock, ask, request_timeout=30)
        data = bytes(i % 251 for i in range(parts_count * 5000))
        plan = [JournalPart(n, (n - 1) * 5000, 5000,
                            base64.b64encode(hashlib.md5(data[(n - 1) * 5000:n * 5000]).digest()).decode(), False)
                for n in range(1, parts_count + 1)]

        def body(part: Part) -> PartBody:
            # 50-byte writes, as the body's 64 KiB slices of a 5 MiB part.
            blocks = iter([data[o:o + 50] for o in range(part.offset, part.offset + part.size, 50)])
            return PartBody(clock, part.size, lambda: succeed(next(blocks, b"")), lambda: None)

        async def confirm(first: int, last: int, upto: int) -> None:
            pass

        every = ranges(plan)
        count = StreamCount(4, 64, start=memory.start if memory else start)
        self.stats = StreamStats()
        sender = StreamSender(clock, target, access, list(every), every, count, body, confirm, self.stats,
                              stall_timeout=15.0)
        d = Deferred.fromCoroutine(sender.run())
        while not d.called and clock.seconds() < 3600:
            clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), "done")
        for n in range(1, parts_count + 1):
            self.assertEqual(bytes(target.partials[f"{URL}{n}"]), data[(n - 1) * 5000:n * 5000])
        if memory is not None:
            memory.remember(count)
        return clock.seconds(), target, count

    def test_a_wide_start_fills_a_fat_link_to_the_end(self) -> None:
        # 32 streams fill it; 52 parts of 10 s each at one stream's speed.
        ideal = 52 * 5000 / (32 * self.RATE)
        wide, target, _ = self.run_over(52, 32 * self.RATE, start=32)
        self.assertGreaterEqual(target.peak, 52)     # every part in flight at once: no tail
        self.assertLess(wide, ideal * 1.15)
        narrow, _, _ = self.run_over(52, 32 * self.RATE, start=4)
        self.assertGreater(narrow, wide * 1.2)       # the ramp from 4 costs what the wide start saves

    def test_a_wide_start_on_a_thin_link_wastes_nothing(self) -> None:
        # 4 streams fill it: the link is shared, so 32 and more streams
        # each go slower but together as fast, and none stalls.
        seconds, target, count = self.run_over(160, 4 * self.RATE, start=32)
        self.assertLess(seconds, 160 * 5000 / (4 * self.RATE) * 1.15)
        self.assertEqual(self.stats.stalls, 0)
        self.assertEqual(self.stats.resumes, 0)
        self.assertEqual(self.stats.bytes_sent, 160 * 5000)

    def test_a_range_reset_after_it_carried_bytes_reconnects_at_once(self) -> None:
        # One 5,000-byte range at 500 bytes a second, its connection reset
        # every 3 s: each reset costs at most the first backoff (0.5 s),
        # not one doubling from there towards 10 s.
        clock = reactor_for(self)
        target = CappedTusTarget(clock, self.RATE, self.RATE, buffer=100, token="t", reset_after=3.0)

        async def ask() -> None:
            clock.callLater(0.3, access.authorized, "t", URL, 9000)

        access = ReceiverAccess(clock, ask, request_timeout=30)
        data = bytes(i % 251 for i in range(5000))
        plan = [JournalPart(1, 0, 5000, base64.b64encode(hashlib.md5(data).digest()).decode(), False)]

        def body(part: Part) -> PartBody:
            blocks = iter([data[o:o + 50] for o in range(part.offset, part.offset + part.size, 50)])
            return PartBody(clock, part.size, lambda: succeed(next(blocks, b"")), lambda: None)

        async def confirm(first: int, last: int, upto: int) -> None:
            pass

        stats = StreamStats()
        every = ranges(plan)
        sender = StreamSender(clock, target, access, list(every), every, StreamCount(1, 1), body, confirm, stats)
        d = Deferred.fromCoroutine(sender.run())
        while not d.called and clock.seconds() < 600:
            clock.advance(0.05)
        self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(bytes(target.partials[f"{URL}1"]), data)
        self.assertGreaterEqual(stats.resumes, 3)
        patches = [t for t, method in target.times if method == "PATCH"]
        heads = [t for t, method in target.times if method == "HEAD"]
        self.assertEqual(len(heads), stats.resumes)
        for broke, head in zip([p + 3.0 for p in patches], heads, strict=False):
            self.assertLessEqual(head - broke, 0.5 + 0.1)
