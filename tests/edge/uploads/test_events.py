"""
What an upload's owner hears as it happens: L{UploadAnnouncer}'s
coalescing with a Clock, and the receiver's events for an upload over
HTTP (in memory, on the test reactor).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relay.edge.events import Event, EventHub
from relay.edge.uploads.announcer import UploadAnnouncer

from .harness import CONFIG, KEY, Edge, random_bytes, tus_headers

A, B = "a" * 32, "b" * 32


class AnnouncerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.hub = EventHub()
        self.heard: list[Event] = []
        self.hub.subscribe("alice", self.heard.append)
        self.announce = UploadAnnouncer(self.clock, self.hub)

    def offsets(self, upload_id: str = A) -> list[int]:
        return [e.data["offset"] for e in self.heard if e.kind == "upload.progress" and e.data["upload_id"] == upload_id]

    def test_at_most_four_a_second_and_the_latest_wins(self) -> None:
        for offset in range(1, 101):  # a report every 10 ms for a second
            self.announce.received("alice", A, offset, 100)
            self.clock.advance(0.01)
        self.clock.advance(1)
        offsets = self.offsets()
        self.assertEqual((len(offsets), offsets[0], offsets[-1]), (5, 1, 100))
        times = []
        hub, clock = EventHub(), Clock()
        hub.subscribe("alice", lambda e: times.append(clock.seconds()))
        announce = UploadAnnouncer(clock, hub)
        for offset in range(1, 1001):
            announce.transferred("alice", A, offset, 1000, 0, 1)
            clock.advance(0.003)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        self.assertGreaterEqual(min(gaps), 0.25 - 1e-9)

    def test_uploads_and_kinds_are_coalesced_apart(self) -> None:
        self.announce.received("alice", A, 1, 10)
        self.announce.received("alice", B, 1, 10)
        self.announce.transferred("alice", A, 5, 10, 1, 2)
        self.assertEqual([(e.kind, e.data["upload_id"]) for e in self.heard],
                         [("upload.progress", A), ("upload.progress", B), ("transfer.progress", A)])
        self.assertEqual(self.heard[2].data, {"upload_id": A, "confirmed": 5, "total": 10,
                                              "parts_done": 1, "parts_total": 2})

    def test_a_state_sends_what_is_held_back_first(self) -> None:
        self.announce.received("alice", A, 1, 10)
        self.announce.received("alice", A, 10, 10)
        self.announce.received("alice", B, 1, 10)
        self.announce.received("alice", B, 2, 10)
        self.announce.state("alice", A, "staged")
        self.assertEqual([(e.kind, e.data.get("offset") or e.data.get("state")) for e in self.heard
                          if e.data["upload_id"] == A],
                         [("upload.progress", 1), ("upload.progress", 10), ("upload.state", "staged")])
        self.clock.advance(1)
        self.assertEqual(self.offsets(A), [1, 10], "not again")
        self.assertEqual(self.offsets(B), [1, 2], "the other upload's held report, in its time")
        self.announce.state("alice", A, "failed", "why")
        self.assertEqual(self.heard[-1].data, {"upload_id": A, "state": "failed", "reason": "why"})
        self.announce.received("alice", B, 3, 10)
        self.announce.flush()
        self.assertEqual(self.offsets(B), [1, 2, 3])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_held_back_comes_after_an_upload_is_gone(self) -> None:
        self.announce.received("alice", A, 1, 10)
        self.announce.received("alice", A, 2, 10)  # held back
        self.announce.removed("alice", A, "terminated")
        self.clock.advance(1)
        self.assertEqual([(e.kind, e.data.get("offset")) for e in self.heard],
                         [("upload.progress", 1), ("upload.removed", None)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_only_the_owner_hears(self) -> None:
        self.announce.state("bob", A, "receiving")
        self.assertEqual(self.heard, [])

    def test_no_hub(self) -> None:
        quiet = UploadAnnouncer(self.clock, None)
        quiet.received("alice", A, 1, 10)
        quiet.state("alice", A, "staged")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ReceiverEventTests(TestCase):
    timeout = 60

    async def test_an_upload_over_http(self) -> None:
        """
        Creation says C{receiving}; a body of 8 MiB streamed at 1 MiB a
        tenth of a second reports its progress (at most four times a
        second, ending with the whole length) and then C{staged}; an
        interrupted body's report is what the spool kept.
        """
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        edge = await Edge(directory, replace(CONFIG, max_size=1 << 26), tick=0.1).start()
        self.addCleanup(edge.stop)
        heard: list[tuple[float, Event]] = []
        edge.hub.subscribe("alice", lambda e: heard.append((edge.reactor.seconds(), e)))
        edge.hub.subscribe("bob", lambda e: self.fail(f"bob heard {e}"))
        size = 8 << 20
        url = await edge.create(size)
        upload_id = url.rsplit("/", 1)[1]
        started = edge.reactor.seconds()
        r = await edge.patch(url, 0, random_bytes(size))
        elapsed = edge.reactor.seconds() - started
        self.assertGreater(elapsed, 0.5)
        self.assertEqual(r.code, 204)
        events = [e for _, e in heard]
        self.assertEqual(events[0].data, {"upload_id": upload_id, "state": "receiving"})
        self.assertEqual(events[-1].data, {"upload_id": upload_id, "state": "staged"})
        progress = [e.data for e in events[1:-1]]
        self.assertTrue(progress)
        self.assertTrue(all(p["upload_id"] == upload_id and p["length"] == size for p in progress))
        offsets = [p["offset"] for p in progress]
        self.assertEqual(offsets, sorted(offsets))
        self.assertEqual(offsets[-1], size)
        self.assertLessEqual(len(progress), elapsed / 0.25 + 2)
        # A deferred-length upload's PATCH ends without completing it.
        url = await edge.create(None)
        heard.clear()
        r = await edge.request("PATCH", url, tus_headers(KEY, Upload_Offset="0",
                               Content_Type="application/offset+octet-stream"), random_bytes(1000))
        self.assertEqual(r.code, 204)
        self.assertEqual([(e.kind, e.data["offset"], e.data["length"]) for _, e in heard][-1:],
                         [("upload.progress", 1000, None)])

    async def test_a_terminated_or_expired_upload_is_said_to_be_gone(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        edge = await Edge(directory).start()
        self.addCleanup(edge.stop)
        heard: list[Event] = []
        edge.hub.subscribe("alice", heard.append)
        url = await edge.create(10)
        self.assertEqual((await edge.patch(url, 0, b"abc")).code, 204)
        self.assertEqual((await edge.request("DELETE", url, tus_headers())).code, 204)
        removed = [e.data for e in heard if e.kind == "upload.removed"]
        self.assertEqual(removed, [{"upload_id": url.rsplit("/", 1)[1], "reason": "terminated"}])
        heard.clear()
        url = await edge.create(10)
        await edge.patch(url, 0, b"abc")
        later = edge.service.now() + 10**9
        edge.service.now = lambda: later  # type: ignore[method-assign]
        self.assertEqual(await edge.fired(Deferred.fromCoroutine(edge.service.expire())), [url.rsplit("/", 1)[1]])
        self.assertEqual(heard[-1].kind, "upload.removed")
        self.assertEqual(heard[-1].data, {"upload_id": url.rsplit("/", 1)[1], "reason": "expired"})
