"""
An uploads component on a real loopback port inside the test's reactor, and
a raw HTTP helper, for the upload tests.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import treq
from klein import Klein
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.web.server import Site

from relay.db import Database
from relay.edge.events import EventHub
from relay.edge.uploads.housekeeping import UploadHousekeeping
from relay.edge.uploads.resource import UploadRoutes
from relay.edge.uploads.service import UploadLimits, UploadService
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import SCHEMA, UploadStore
from relay.testing.auth import FakeAuthenticator, FakeProjectAccess
from relay.testing.transfer import FakeUploadSink
from relay.tus.streaming import StreamingSettings, streaming_request_factory

KEY = "k-alice"
OTHER_KEY = "k-bob"
MASTER = bytes(range(32))


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
    """The uploads component, listening on 127.0.0.1."""

    directory: Path
    limits: UploadLimits = field(default_factory=UploadLimits)
    cors_origins: tuple[str, ...] = ()
    body_timeout: float = 10.0
    header_timeout: float = 10.0
    spool: Spool | None = None
    sink: FakeUploadSink = field(default_factory=FakeUploadSink)
    hub: EventHub = field(default_factory=EventHub)
    cleanups: list[Any] = field(default_factory=list)

    async def start(self) -> Edge:
        self.auth = FakeAuthenticator()
        self.auth.add_user("alice", key=KEY, session="s-alice")
        self.auth.add_user("bob", key=OTHER_KEY)
        self.projects = FakeProjectAccess()
        self.projects.grant("alice", "shared")
        self.db = Database(reactor, self.directory / "edge.db", [SCHEMA])
        self.db.startService()
        if self.spool is None:
            self.spool = Spool(self.directory / "spool", MASTER, segment_size=1 << 16)
        self.store = UploadStore(self.db)
        self.service = UploadService(reactor, self.store, self.spool, self.sink, self.projects,
                                     self.limits, events=self.hub)
        self.service.startService()
        await self.service._recovery
        self.housekeeping = UploadHousekeeping(self.service, 3600, reactor)
        app = Klein()
        UploadRoutes(self.service, self.auth, self.cors_origins).routes(app)
        settings = StreamingSettings(reactor, b"/files", self.body_timeout, high_water=1 << 18,
                                     read_size=1 << 18)
        self.site = Site(app.resource(), requestFactory=streaming_request_factory(settings),
                         timeout=self.header_timeout, reactor=reactor)
        self.site.displayTracebacks = False
        self.port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.site)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        return self

    async def stop(self) -> None:
        for cleanup in self.cleanups:
            await cleanup()
        await self.port.stopListening()
        await self.service.stopService()
        await self.db.stopService()

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, data: bytes | None = None
    ) -> Response:
        url = path if path.startswith("http") else self.url + path
        response = await treq.request(method, url, headers=headers or {}, data=data,
                                      persistent=False)
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


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def later(seconds: float, fn: Any, *args: Any) -> None:
    reactor.callLater(seconds, fn, *args)
