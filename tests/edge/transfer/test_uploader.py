"""
The part uploader, with a Clock and the fake part target: retries with
bounded backoff, stall and part timeouts, fresh URLs after a refusal, the
slot limit, and what ends a part for good.
"""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relay.edge.transfer.body import PartBody
from relay.edge.transfer.planner import Part
from relay.edge.transfer.uploader import (
    HTTPPartTarget,
    IPartTarget,
    PartFailed,
    PartResponse,
    PartUploader,
    RetryPolicy,
    UploadGone,
)
from relay.testing.transfer import FakePartTarget

SEGMENT = 1000
DATA = bytes(random.Random(7).randbytes(3500))


def md5_of(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class Harness:
    def __init__(self, slots: int = 16, policy: RetryPolicy | None = None, consume: bool = True) -> None:
        self.clock = Clock()
        self.target = FakePartTarget(consume=consume)
        self.uploader = PartUploader(
            self.clock, self.target, DeferredSemaphore(slots),
            policy or RetryPolicy(initial=1.0, factor=2.0, cap=8.0, stall_timeout=30.0, part_timeout=600.0),
            random.Random(3),
        )
        self.url_serial = 0
        self.invalidated: list[tuple[int, str]] = []
        self.closed = 0
        self.current: dict[int, str] = {}

    def url_for(self, number: int) -> Deferred[str]:
        if number not in self.current:
            self.url_serial += 1
            self.current[number] = f"https://s3.example/k?partNumber={number}&X-Amz-Signature=s{self.url_serial}"
        return succeed(self.current[number])

    def invalidate(self, number: int, url: str) -> None:
        self.invalidated.append((number, url))
        if self.current.get(number) == url:
            del self.current[number]

    def open_body(self, part: Part) -> PartBody:
        blocks = [DATA[i:min(i + SEGMENT, part.end)] for i in range(part.offset, part.end, SEGMENT)]

        def read_next() -> Deferred[bytes]:
            return succeed(blocks.pop(0) if blocks else b"")

        def close() -> None:
            self.closed += 1

        return PartBody(self.clock, part.size, read_next, close)

    def send(self, part: Part) -> Deferred[str]:
        md5 = md5_of(DATA[part.offset:part.end])
        return Deferred.fromCoroutine(
            self.uploader.send(part, md5, self.url_for, self.invalidate, self.open_body)
        )

    def answer(self, response: PartResponse | Exception, index: int = -1) -> None:
        request = self.target.requests[index]
        if isinstance(response, Exception):
            request.answer.errback(response)
        else:
            request.answer.callback(response)


PART = Part(1, 0, 3500)
GOOD = PartResponse(200, hashlib.md5(DATA).hexdigest())


class UploaderTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IPartTarget, FakePartTarget()))
        self.assertTrue(verifyObject(IPartTarget, HTTPPartTarget(Clock())))

    def test_streams_the_part_with_its_digest(self) -> None:
        h = Harness()
        d = h.send(PART)
        request = h.target.requests[0]
        self.assertEqual(request.headers, {"Content-MD5": md5_of(DATA)})
        self.assertEqual(bytes(request.received.data), DATA)
        self.assertEqual(request.body.length, len(DATA))  # type: ignore[attr-defined]
        h.answer(GOOD)
        self.assertEqual(self.successResultOf(d), hashlib.md5(DATA).hexdigest())
        self.assertEqual(h.closed, 1)

    def test_network_failures_back_off(self) -> None:
        """
        Each failure waits longer: full jitter under a ceiling that doubles
        from 1 s up to the cap of 8 s.
        """
        h = Harness()
        d = h.send(PART)
        ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
        delays = []
        for attempt in range(1, len(ceilings) + 1):
            h.answer(ConnectionLost())
            waited = 0.0
            while len(h.target.requests) == attempt:
                h.clock.advance(0.01)
                waited += 0.01
            delays.append(waited)
        for delay, ceiling in zip(delays, ceilings, strict=True):
            self.assertLessEqual(delay, ceiling + 0.011)
        # Not immediate retries: jitter averages half the ceiling.
        self.assertGreater(sum(delays), sum(ceilings) / 4)
        self.assertGreater(max(delays[3:]), 2.0)
        self.assertNoResult(d)
        h.answer(GOOD)
        self.assertEqual(self.successResultOf(d), hashlib.md5(DATA).hexdigest())
        self.assertEqual(h.uploader.stats.retries, len(ceilings))

    def test_server_errors_are_retried(self) -> None:
        h = Harness()
        d = h.send(PART)
        for status, code in ((500, "InternalError"), (503, "SlowDown"), (429, "")):
            h.answer(PartResponse(status, "", code))
            h.clock.advance(10)
        h.answer(GOOD)
        self.successResultOf(d)
        self.assertEqual(h.invalidated, [])

    def test_refused_url_is_replaced(self) -> None:
        """
        403 (or rclone's 400 AccessDenied for an expired URL): the next
        attempt uses a fresh URL.
        """
        h = Harness()
        d = h.send(PART)
        first = h.target.requests[0].url
        h.answer(PartResponse(403, "", "AccessDenied"))
        h.clock.advance(10)
        second = h.target.requests[1].url
        self.assertNotEqual(first, second)
        h.answer(PartResponse(400, "", "AccessDenied"))
        h.clock.advance(10)
        self.assertNotEqual(h.target.requests[2].url, second)
        h.answer(GOOD)
        self.successResultOf(d)
        self.assertEqual([n for n, _ in h.invalidated], [1, 1])

    def test_network_failures_keep_the_url(self) -> None:
        """
        A reset says nothing about the URL: asking for another would cross
        the same bad link for nothing.
        """
        h = Harness()
        h.send(PART)
        for _ in range(5):
            h.answer(ConnectionLost())
            h.clock.advance(10)
        self.assertEqual(h.invalidated, [])
        self.assertEqual({r.url for r in h.target.requests}, {h.target.requests[0].url})

    def test_stall_abandons_the_attempt(self) -> None:
        """
        No byte moves for stall_timeout: the request is cancelled (its body
        stops) and the part is tried again.
        """
        h = Harness(consume=False)
        d = h.send(PART)
        request = h.target.requests[0]
        h.clock.advance(29)
        self.assertFalse(request.answer.called)
        h.clock.advance(2)
        self.assertTrue(request.answer.called)
        self.assertEqual(h.uploader.stats.stalls, 1)
        h.clock.advance(10)
        self.assertEqual(len(h.target.requests), 2)
        self.assertNoResult(d)

    def test_progress_keeps_a_slow_attempt_alive(self) -> None:
        h = Harness(consume=False)
        h.send(PART)
        request = h.target.requests[0]
        collector: Any = request.received
        request.body.startProducing(collector)
        for _ in range(10):
            h.clock.advance(20)
            request.body.pauseProducing()  # type: ignore[attr-defined]
            request.body.resumeProducing()  # type: ignore[attr-defined]
        self.assertFalse(request.answer.called)

    def test_part_timeout(self) -> None:
        h = Harness(consume=False, policy=RetryPolicy(stall_timeout=1000, part_timeout=100))
        h.send(PART)
        request = h.target.requests[0]
        for _ in range(99):
            h.clock.advance(1)
            request.body.resumeProducing()  # type: ignore[attr-defined]
        self.assertFalse(request.answer.called)
        h.clock.advance(2)
        self.assertTrue(request.answer.called)
        self.assertEqual(h.uploader.stats.stalls, 1)

    def test_no_such_upload_ends_the_transfer(self) -> None:
        h = Harness()
        d = h.send(PART)
        h.answer(PartResponse(404, "", "NoSuchUpload"))
        self.failureResultOf(d, UploadGone)

    def test_bad_digest_is_refused_after_some_attempts(self) -> None:
        h = Harness(policy=RetryPolicy(max_refusals=3, cap=1))
        d = h.send(PART)
        for _ in range(2):
            h.answer(PartResponse(400, "", "BadDigest"))
            h.clock.advance(2)
        self.assertNoResult(d)
        h.answer(PartResponse(200, "0" * 32))  # a 200 with another digest is no better
        self.failureResultOf(d, PartFailed)

    def test_slots_bound_the_requests_in_flight(self) -> None:
        h = Harness(slots=2)
        parts = [Part(n, 0, 3500) for n in (1, 2, 3)]
        ds = [h.send(p) for p in parts]
        self.assertEqual(len(h.target.pending()), 2)
        self.assertEqual(h.uploader.in_flight, 2)
        h.answer(GOOD, 0)
        self.assertEqual(len(h.target.pending()), 2)
        h.answer(GOOD, 1)
        h.answer(GOOD, 2)
        for d in ds:
            self.successResultOf(d)
        self.assertEqual(h.uploader.in_flight, 0)

    def test_cancel_stops_the_body(self) -> None:
        """
        Cancelling a send (the part arrived another way, the transfer
        stops) ends it: the agent's wrapped CancelledError is not taken for
        a network failure to retry.
        """
        h = Harness(consume=False)
        d = h.send(PART)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(h.closed, 1)
        self.assertEqual(h.uploader.slots.tokens, 16)
        h.clock.advance(100)
        self.assertEqual(len(h.target.requests), 1, "no retry")

    def test_cancel_during_backoff(self) -> None:
        h = Harness()
        d = h.send(PART)
        h.answer(ConnectionLost())
        d.cancel()
        self.failureResultOf(d, CancelledError)
        h.clock.advance(100)
        self.assertEqual(len(h.target.requests), 1)
