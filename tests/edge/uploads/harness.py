"""
The uploads component, built by L{build_uploads} as the tap builds it, for
the upload tests: by default on relay's test reactor, with connections in
memory (L{relay.testing.pipe}) and the synchronous database, so time moves
only when a test says so; with C{listen=True} on a real loopback port in
the global reactor, for real tus clients.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import treq
from klein import Klein
from treq.client import HTTPClient
from treq.testing import _SynchronousProducer
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.server import Site

from relay.edge.config import UploadsSection
from relay.edge.events import EventHub
from relay.edge.uploads.component import build_uploads
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import SCHEMA
from relay.metrics import Metrics
from relay.process import InOrder
from relay.testing.auth import FakeAuthenticator, FakeProjectAccess
from relay.testing.db import SynchronousDatabase
from relay.testing.pipe import Pipe, PipeAgent, settle
from relay.testing.reactor import TestReactor, inline_threads
from relay.testing.transfer import FakeUploadSink
from relay.threads import Threads

KEY = "k-alice"
OTHER_KEY = "k-bob"
MASTER = bytes(range(32))

#: The limits most tests run with: 16 MiB uploads, no disk reserve, no quota.
CONFIG = UploadsSection(max_size=1 << 24, disk_reserve=0, user_quota=0)


def metadata(**items: str | bytes) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()}"
        for k, v in items.items()
    )


def checksum(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def tus_headers(key: str | None = KEY, **extra: str) -> dict[str, str]:
    headers = {"Tus-Resumable": "1.0.0"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    headers.update({k.replace("_", "-"): v for k, v in extra.items()})
    return headers


@dataclass
class Response:
    code: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Edge:
    """
    The uploads component and its routes behind a C{Site}.

    @ivar listen: serve on a real loopback port in the global reactor (for
        real clients: tuspy, tus-js-client); otherwise everything runs on
        C{reactor}, a L{TestReactor}, and requests travel through pipes.
    @ivar tick: seconds each read of a request body takes in memory (0:
        none), for what depends on time passing while bytes arrive; with a
        tick, L{fired} also lets time pass to the calls due within a second.
    @ivar spool: the spool (by default one of 64 KiB segments in the
        directory, with L{MASTER} as its key).
    @ivar pool: makes the spool I/O's thread pool (in memory; by default
        one that runs the work in place).
    """

    directory: Path
    config: UploadsSection = CONFIG
    spool: Spool | None = None
    listen: bool = False
    tick: float = 0.0
    pool: Callable[[TestReactor], Any] | None = None
    sink: FakeUploadSink = field(default_factory=FakeUploadSink)
    hub: EventHub = field(default_factory=EventHub)
    cleanups: list[Any] = field(default_factory=list)
    pipes: list[Pipe] = field(default_factory=list)

    async def start(self) -> Edge:
        self.auth = FakeAuthenticator()
        self.auth.add_user("alice", key=KEY, session="s-alice")
        self.auth.add_user("bob", key=OTHER_KEY)
        self.projects = FakeProjectAccess()
        self.projects.grant("alice", "shared")
        threads = None
        if self.listen:
            from twisted.internet import reactor

            self.reactor: Any = reactor
        else:
            self.reactor = TestReactor()
            if self.pool is None:
                threads = inline_threads(self.reactor, "spool")
            else:
                threads = Threads(self.reactor, "spool", 1, pool=self.pool(self.reactor))
        self.db = SynchronousDatabase(self.directory / "edge.db", [SCHEMA])
        if self.spool is None:
            # Small segments: bodies of a few hundred KiB cross segment
            # boundaries too.
            self.spool = Spool(self.directory / "spool", MASTER, segment_size=1 << 16)
        self.uploads = build_uploads(
            self.config, self.directory, self.reactor, self.db, Metrics(), self.auth, self.projects, self.sink,
            events=self.hub, spool=self.spool, threads=threads,
        )
        self.spool = self.uploads.spool
        self.service = self.uploads.service
        self.store = self.service.store
        self.housekeeping = self.uploads.housekeeping
        self.root = InOrder()
        self.uploads.set_service_parent(self.root)
        self.root.startService()
        await self.fired(self.service._recovery)
        app = Klein()
        self.uploads.add_routes(app)
        self.site = Site(app.resource(), requestFactory=self.uploads.request_factory,
                         timeout=self.uploads.header_timeout, reactor=self.reactor)
        self.site.displayTracebacks = False
        if self.listen:
            self.port = await serverFromString(self.reactor, "tcp:0:interface=127.0.0.1").listen(self.site)
            self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        else:
            self.url = "http://127.0.0.1:8080"
        return self

    async def stop(self) -> None:
        for cleanup in self.cleanups:
            await cleanup()
        if self.listen:
            await self.port.stopListening()
        else:
            for pipe in self.pipes:
                if not pipe.closed:
                    pipe.client.abortConnection()
        if self.root.running:
            await self.fired(self.root.stopService())
        await self.db.stopService()
        if not self.listen:
            left = self.reactor.pending()
            assert not left, f"the uploads component left calls pending: {left}"

    # -- time and bytes, in memory ---------------------------------------------

    def settle(self) -> None:
        """
        Let everything that can happen now happen (in memory).
        """
        if not self.listen:
            settle(self.reactor, self.pipes, tick=self.tick)

    def advance(self, seconds: float) -> None:
        """
        Settle, let C{seconds} pass on the test reactor, settle again.
        """
        self.settle()
        self.reactor.advance(seconds)
        self.settle()

    async def fired(self, d: Deferred[Any] | None) -> Any:
        """
        C{d}'s result: in memory, once everything has settled, failing if it
        has not fired by then; on the real reactor, whenever it fires.
        """
        if d is None:
            return None
        if self.listen:
            return await d
        self.settle()
        results: list[Any] = []
        d.addBoth(results.append)
        while not results and self.tick:
            # Time passes here: on to the next call due within a second.
            due = [c.getTime() for c in self.reactor.getDelayedCalls() if c.active()]
            if not due or min(due) > self.reactor.seconds() + 1:
                break
            self.advance(min(due) - self.reactor.seconds())
        assert results, f"{d} has not fired, and nothing more can happen without time passing"
        result = results[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    async def eventually(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """
        Wait for C{predicate} on the real reactor (C{listen=True}: real
        clients run at their own pace), failing after C{timeout} seconds.
        """
        assert self.listen
        deadline = self.reactor.seconds() + timeout
        while not predicate():
            assert self.reactor.seconds() < deadline, f"not within {timeout} s"
            await deferLater(self.reactor, 0.01, lambda: None)

    def connect(self, client: Protocol) -> None:
        """
        Open a raw connection from C{client} to the site (in memory).
        """
        assert not self.listen
        server = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
        assert server is not None
        self.pipes.append(Pipe(server, client))
        self.settle()

    # -- HTTP ------------------------------------------------------------------

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, data: bytes | None = None
    ) -> Response:
        """
        One request on a connection of its own, and its whole answer.
        """
        answer: Response = await self.fired(self.begin(method, path, headers, data))
        return answer

    def begin(
        self, method: str, path: str, headers: dict[str, str] | None = None, data: bytes | None = None
    ) -> Deferred[Response]:
        """
        Send a request; the Deferred fires with its whole answer (in memory,
        as the test lets things happen: L{settle}, L{advance}).
        """
        return Deferred.fromCoroutine(self._request(method, path, headers, data))

    async def _request(
        self, method: str, path: str, headers: dict[str, str] | None, data: bytes | None
    ) -> Response:
        url = path if path.startswith("http") else self.url + path
        if self.listen:
            response = await treq.request(method, url, headers=headers or {}, data=data, persistent=False)
        else:
            client = HTTPClient(PipeAgent(self.site, self.pipes), data_to_body_producer=_SynchronousProducer)
            response = await client.request(method, url, headers=headers or {}, data=data)
        body = await response.content()
        flat = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
        return Response(response.code, flat, body)

    async def create(self, length: int | None = None, key: str = KEY, **extra: str) -> str:
        headers = tus_headers(key, **extra)
        if length is None:
            headers.setdefault("Upload-Defer-Length", "1")
        else:
            headers["Upload-Length"] = str(length)
        r = await self.request("POST", "/files/", headers)
        assert r.code == 201, (r.code, r.body)
        location = r.header("location")
        assert location is not None
        return location

    async def patch(self, url: str, offset: int, data: bytes, key: str = KEY, **extra: str) -> Response:
        headers = tus_headers(key, Upload_Offset=str(offset),
                              Content_Type="application/offset+octet-stream", **extra)
        return await self.request("PATCH", url, headers, data)

    async def head(self, url: str, key: str = KEY) -> Response:
        return await self.request("HEAD", url, tus_headers(key))

    def stored(self, url: str) -> bytes:
        assert self.spool is not None
        upload_id = url.rsplit("/", 1)[-1]
        with self.spool.reader(upload_id) as r:
            return r.read(0, r.length)


def random_bytes(n: int) -> bytes:
    return secrets.token_bytes(n)
