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
    StreamSender,
    StreamStats,
    ranges,
)
from relay.edge.transfer.tus_client import ITusTarget
from relay.testing.reactor import reactor_for
from relay.testing.transfer import FakeTusTarget

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
        self.assertEqual(window(2000, 4), 8)     # twice the streams, twice the rate: grow
        self.assertEqual(window(2050, 8), 4)     # no gain from 8: back to 4
        self.assertEqual(window(2000, 4), 4)
        self.assertEqual(window(2000, 3), 4)     # not all busy: no growth

    def test_stays_within_bounds(self) -> None:
        count = StreamCount(3, 5)
        sent = 0
        for rate in (1000, 3000, 9000, 27000):
            sent += rate * 2
            self.assertLessEqual(count.sample(sent, 2.0, 99), 5)
        self.assertGreaterEqual(count.limit, 3)


