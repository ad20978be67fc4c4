"""
A cloud and one edge with its API on a Klein app, driven through
C{StubTreq}: commands go to the cloud and its answers come back only when a
test says so (L{ApiWorld.round_trip}), as over a link that may be down.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relay.cloud import sync
from relay.edge.events import Event, EventHub
from relay.edge.web.announcer import ReplicaAnnouncer
from relay.edge.web.api import api_routes
from relay.link.envelope import Envelope
from relay.testing.registry import RENDER, TEST_COST, CloudSide, EdgeSide, inline
from relay.testing.sync import FakeOutbox

BASE = "http://edge.example"


class InlineThreads:
    """
    C{callFromThread} for a database that runs in the calling thread.
    """

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        f(*args, **kwargs)


class ApiWorld(SynchronousTestCase):
    """
    alice owns her default project ("Home") with bob as a viewer; carol is
    in no project of alice's.  C{self.seen} holds the live events each
    would see on their stream.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        tmp = Path(self.mktemp())
        tmp.mkdir()
        self.cloud = CloudSide(tmp / "cloud.db", self.clock)
        # The announcer observes the edge's applier, as in the tap.
        self.hub = EventHub()
        self.edge = EdgeSide("e1", tmp / "edge.db", self.clock, observer=ReplicaAnnouncer(self.hub, InlineThreads()))
        self.addCleanup(self.cloud.close)
        self.addCleanup(self.edge.close)
        self.alice = self.cloud.add_user("alice", "alice's password")
        self.bob = self.cloud.add_user("bob", "bob's password")
        self.carol = self.cloud.add_user("carol", "carol's password")
        self.home = self.cloud.default_project(self.alice["id"])
        self.cloud.run(self.cloud.registry.set_member, self.home, self.bob["id"], "viewer")
        self.key = self.cloud.run(self.cloud.registry.create_key, self.alice["id"], "ci")
        self.cloud.publish_kinds(RENDER)
        self.sync()
        # What each user would see on their stream from now on.
        self.seen: dict[str, list[Event]] = {}
        for user in (self.alice, self.bob, self.carol):
            self.seen[user["name"]] = []
            self.hub.subscribe(user["id"], self.seen[user["name"]].append)
        #: What the link's state is, as the bridge would say.
        self.link: tuple[str, float | None] = ("up", self.clock.seconds())
        self.app = Klein()
        self.edge.identity.routes(self.app)
        self.streams = api_routes(
            self.app, self.edge.identity, self.edge.db, self.edge.issuer, self.hub, self.edge.outbox.wake,
            self.clock, inline, cost=TEST_COST, link=lambda: self.link,
        )
        self.streams.startService()
        #: The hub's subscribers without any stream open.
        self.quiet = self.hub.subscribers
        self.resource = self.app.resource()
        self.sessions: dict[str, tuple[str, str]] = {}
        self._treq: StubTreq | None = None

    # -- the link, by hand -----------------------------------------------------

    def sync(self) -> None:
        """
        Everything the cloud logged that the edge lacks, to the edge.
        """
        applied = self.edge.db.run_now(lambda c: c.execute("SELECT applied FROM replica_sync").fetchone()[0])
        if applied == 0:
            self.edge.db.run_now(lambda c: c.execute("UPDATE replica_sync SET synced = 1"))
        head = self.cloud.run(sync.sequence)
        if head > applied:
            events = self.cloud.run(sync.events, applied, head)
            self.edge.inbox.deliver(
                Envelope(type="sync.events", source="cloud", time=0.0, body={"events": events, "head": head})
            )

    def sent(self) -> list[Envelope]:
        return [m for _, m in self.edge.db.run_now(FakeOutbox.take)]

    def round_trip(self) -> None:
        """
        The edge's commands to the cloud, the cloud's answers back.
        """
        for message in self.sent():
            self.cloud.inbox.deliver(message)
        self.sync()

    def stored(self) -> tuple[int, int]:
        """
        (pending commands, messages in the outbox): both 0 after a refusal.
        """
        return self.edge.db.run_now(lambda c: (
            c.execute("SELECT count(*) FROM pending_commands").fetchone()[0],
            c.execute("SELECT count(*) FROM fake_outbox").fetchone()[0],
        ))

    # -- HTTP ------------------------------------------------------------------

    @property
    def treq(self) -> StubTreq:
        """
        The client for streams and one-off requests (never logged in through:
        its cookie jar would carry the session to requests meant without).
        """
        if self._treq is None:
            self._treq = StubTreq(self.resource)
        return self._treq

    def request(
        self, method: str, path: str, body: Any = None, *, user: str | None = None, csrf: bool = True,
        bearer: str | None = None, headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        all_headers = dict(headers or {})
        if user is not None:
            cookie, token = self.session(user)
            all_headers["Cookie"] = f"relay_session={cookie}"
            if csrf:
                all_headers["X-CSRF-Token"] = token
        if bearer is not None:
            all_headers["Authorization"] = f"Bearer {bearer}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers["Content-Type"] = content_type
        client = StubTreq(self.resource)  # no cookie jar shared between requests
        d = client.request(method, BASE + path, data=data, headers={k: [v] for k, v in all_headers.items()})
        client.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        self.headers = response.headers
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"], content)
        return response.code, json.loads(content)

    def session(self, user: str) -> tuple[str, str]:
        if user not in self.sessions:
            self.sessions[user] = self.login(user, f"{user}'s password")
        return self.sessions[user]

    def login(self, user: str, password: str) -> tuple[str, str]:
        client = StubTreq(self.resource)
        d = client.post(BASE + "/api/login", json={"name": user, "password": password})
        client.flush()
        response = self.successResultOf(d)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(response.code, 200, body)
        (cookie,) = response.headers.getRawHeaders("set-cookie")
        return cookie.split(";")[0].split("=", 1)[1], body["csrf_token"]

    def kinds(self, user: str) -> list[str]:
        return [e.kind for e in self.seen[user]]
