"""
GET /api/events: Server-Sent Events framing, one write per event, the
caller's events only, heartbeats, Last-Event-ID resumption (or reset), and
unsubscribing when the client goes away or its session ends.
"""

from __future__ import annotations

from typing import Any

import treq

from relay.edge.events import EVERYONE
from relay.edge.web.stream import frame
from relay.testing.sync import FakeOutbox
from tests.edge.web.world import BASE, ApiWorld


class StreamTests(ApiWorld):
    def open(self, user: str | None = "alice", headers: dict[str, str] | None = None) -> tuple[Any, list[bytes]]:
        all_headers = dict(headers or {})
        if user is not None:
            all_headers["Cookie"] = f"relay_session={self.session(user)[0]}"
        d = self.treq.get(BASE + "/api/events", headers={k: [v] for k, v in all_headers.items()})
        self.treq.flush()
        response = self.successResultOf(d)
        chunks: list[bytes] = []
        self.done = treq.collect(response, chunks.append)
        self.treq.flush()
        return response, chunks

    def frames(self, chunks: list[bytes]) -> list[dict[str, str]]:
        result = []
        for block in b"".join(chunks).decode().split("\n\n"):
            if block:
                result.append(dict(line.split(": ", 1) if ": " in line else (line, "") for line in block.split("\n")))
        return result

    def test_needs_credentials(self) -> None:
        d = self.treq.get(BASE + "/api/events")
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 401)
        self.assertEqual(self.hub.subscribers, self.quiet)  # the test's own and the status board's

    def test_frames_one_write_per_event_for_the_caller_only(self) -> None:
        response, chunks = self.open()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/event-stream; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        self.assertEqual(b"".join(chunks), b"retry: 3000\n\n" + frame(self.hub.last_id, "ready", {}))
        del chunks[:]
        self.hub.publish(self.alice["id"], "upload.progress", {"offset": 5})
        self.hub.publish(self.bob["id"], "upload.progress", {"offset": 6})
        self.hub.publish(EVERYONE, "replica.changed", {"tables": ["projects"]})
        self.treq.flush()
        self.assertEqual(len(chunks), 2, "each event is written as it comes")
        first, second = self.frames(chunks)
        self.assertEqual(first["event"], "upload.progress")
        self.assertEqual(first["data"], '{"offset": 5}')
        self.assertEqual(int(second["id"]), self.hub.last_id)
        self.assertEqual(second["event"], "replica.changed")

    def test_heartbeat_and_unsubscribe_when_the_client_goes_away(self) -> None:
        response, chunks = self.open()
        self.assertEqual(self.hub.subscribers, self.quiet + 1)
        del chunks[:]
        self.clock.advance(15)
        self.treq.flush()
        self.assertEqual(chunks, [b": keepalive\n\n"])
        response.original.original._transport.stopProducing()
        self.treq.flush()
        self.failureResultOf(self.done)
        self.assertEqual(self.hub.subscribers, self.quiet)
        self.assertEqual(self.streams.open, 0)
        self.clock.advance(60)  # no heartbeat writes to a closed request
        # Only the status board's look at the link is left.
        self.assertEqual([c.func for c in self.clock.getDelayedCalls()], [self.streams.services[0]._poll])

    def test_stream_ends_with_the_session(self) -> None:
        response, chunks = self.open()
        cookie, csrf = self.session("alice")
        d = self.treq.post(BASE + "/api/logout", headers={"Cookie": [f"relay_session={cookie}"],
                                                         "X-CSRF-Token": [csrf]})
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 200)
        self.clock.advance(15)
        self.treq.flush()
        self.successResultOf(self.done)
        self.assertEqual(self.hub.subscribers, self.quiet)

    def test_last_event_id_resumes_or_resets(self) -> None:
        self.hub.publish(self.alice["id"], "a", {})
        mark = self.hub.last_id
        self.hub.publish(self.alice["id"], "b", {"n": 1})
        self.hub.publish(self.bob["id"], "not for alice", {})
        self.hub.publish(EVERYONE, "c", {})
        response, chunks = self.open(headers={"Last-Event-ID": str(mark)})
        self.assertEqual([f.get("event") for f in self.frames(chunks)], [None, "b", "c"])
        for stale in ("999999", "garbage"):
            response, chunks = self.open(headers={"Last-Event-ID": stale})
            (_, reset) = self.frames(chunks)
            self.assertEqual((reset["event"], int(reset["id"])), ("reset", self.hub.last_id))

    def test_stopping_ends_open_streams(self) -> None:
        response, chunks = self.open()
        self.streams.stopService()
        self.treq.flush()
        self.successResultOf(self.done)
        self.assertEqual(self.hub.subscribers, self.quiet - 1, "the status board stopped watching")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        d = self.treq.get(BASE + "/api/events", headers={"Cookie": [f"relay_session={self.session('alice')[0]}"]})
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 503)

    def test_a_snapshot_tells_everyone_to_reload(self) -> None:
        self.cloud.run(self.cloud.registry.set_member, self.home, self.carol["id"], "viewer")
        self.cloud.run(self.cloud.responder.send_snapshot, "e1", [])
        parts = [m for _, m in self.cloud.run(FakeOutbox.take) if m.type == "sync.snapshot"]
        response, chunks = self.open("carol")
        del chunks[:]
        for part in parts:
            self.edge.inbox.deliver(part)
        self.treq.flush()
        (changed,) = self.frames(chunks)
        self.assertEqual(changed["event"], "replica.changed")
        self.assertIn('"users"', changed["data"])
