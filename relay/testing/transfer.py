"""
Fakes for the transfer stage's seams: an in-memory object store for the
cloud side (L{FakeObjectStore} provides L{IObjectStore}), the registry as
the cloud's transfers see it (L{FakeFileRegistry} provides
L{IFileRegistry}), the transfer stage as the tus receiver sees it
(L{FakeUploadSink} provides L{IUploadSink}) and a scriptable part target
for the edge's uploader (L{FakePartTarget} provides L{IPartTarget}).  They
answer with Deferreds that have already fired, or that the test fires, so
tests drive them with a C{Clock} and no sockets.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from relay.cloud.objects import IObjectStore, NoSuchUpload, ObjectInfo, ObjectStoreError, PartInfo
from relay.cloud.transfer_store import Transfer
from relay.cloud.transfers import IFileRegistry
from relay.edge.transfer.tus_client import ITusTarget, TusResponse
from relay.edge.transfer.uploader import IPartTarget, PartResponse
from relay.edge.uploads.handoff import IUploadSink, StagedUpload
from relay.permissions import Refused


@dataclass
class _Upload:
    key: str
    metadata: dict[str, str]
    parts: dict[int, bytes] = field(default_factory=dict)


@implementer(IObjectStore)
class FakeObjectStore:
    """
    S3 in a dictionary.  Tests put parts with L{put_part} (as an edge's PUT
    would), and may make the next calls fail with L{fail_next}.
    """

    def __init__(self) -> None:
        self.uploads: dict[str, _Upload] = {}
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.calls: list[str] = []
        self._ids = itertools.count(1)
        self._failures: list[ObjectStoreError] = []

    def fail_next(self, error: ObjectStoreError) -> None:
        self._failures.append(error)

    def put_part(self, upload_id: str, number: int, data: bytes) -> None:
        self.uploads[upload_id].parts[number] = data

    def _check(self, name: str) -> None:
        self.calls.append(name)
        if self._failures:
            raise self._failures.pop(0)

    def _upload(self, upload_id: str) -> _Upload:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise NoSuchUpload()
        return upload

    def _answer(self, name: str, work: Callable[[], Any]) -> Deferred[Any]:
        try:
            self._check(name)
            return succeed(work())
        except Exception as e:
            return fail(e)

    def create_upload(self, key: str, metadata: Mapping[str, str], content_type: str) -> Deferred[str]:
        def work() -> str:
            upload_id = f"upload-{next(self._ids)}"
            self.uploads[upload_id] = _Upload(key, dict(metadata))
            return upload_id

        return self._answer("create_upload", work)

    def presign_parts(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], expires_in: int
    ) -> Deferred[dict[int, str]]:
        return self._answer("presign_parts", lambda: {
            n: f"https://s3.example/{key}?uploadId={upload_id}&partNumber={n}&X-Amz-Signature=secret"
            for n, _ in parts
        })

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes, md5: str) -> Deferred[str]:
        def work() -> str:
            if base64.b64encode(hashlib.md5(data).digest()).decode() != md5:
                raise ObjectStoreError("UploadPart: BadDigest", transient=False, code="BadDigest")
            self._upload(upload_id).parts[number] = bytes(data)
            return hashlib.md5(data).hexdigest()

        return self._answer("upload_part", work)

    def list_parts(self, key: str, upload_id: str) -> Deferred[list[PartInfo]]:
        return self._answer("list_parts", lambda: [
            PartInfo(n, len(data), hashlib.md5(data).hexdigest())
            for n, data in sorted(self._upload(upload_id).parts.items())
        ])

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> Deferred[str]:
        def work() -> str:
            upload = self._upload(upload_id)
            data = b"".join(upload.parts[n] for n, _ in parts)
            md5s = [hashlib.md5(upload.parts[n]).digest() for n, _ in parts]
            self.objects[key] = (data, upload.metadata)
            del self.uploads[upload_id]
            return f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"

        return self._answer("complete_upload", work)

    def head(self, key: str) -> Deferred[ObjectInfo | None]:
        def work() -> ObjectInfo | None:
            found = self.objects.get(key)
            if found is None:
                return None
            return ObjectInfo(len(found[0]), hashlib.md5(found[0]).hexdigest(), found[1],
                              found[1].get("content-type", ""))

        return self._answer("head", work)

    def abort_upload(self, key: str, upload_id: str) -> Deferred[None]:
        return self._answer("abort_upload", lambda: self.uploads.pop(upload_id, None) and None)

    def sha256(self, key: str) -> Deferred[str]:
        return self._answer("sha256", lambda: hashlib.sha256(self.objects[key][0]).hexdigest())

    def get_file(self, key: str, path: Any) -> Deferred[tuple[int, str]]:
        def work() -> tuple[int, str]:
            if key not in self.objects:
                raise ObjectStoreError(f"no such object {key}", transient=False, code="NoSuchKey")
            data = self.objects[key][0]
            path.write_bytes(data)
            return len(data), hashlib.sha256(data).hexdigest()

        return self._answer("get_file", work)

    def put_file(self, path: Any, key: str, content_type: str) -> Deferred[None]:
        def work() -> None:
            self.objects[key] = (path.read_bytes(), {"content-type": content_type})

        return self._answer("put_file", work)

    def presign_get(self, key: str, expires_in: int) -> Deferred[str]:
        return self._answer("presign_get", lambda: f"https://s3.invalid/{key}?expires={expires_in}")

    def delete(self, key: str) -> Deferred[None]:
        return self._answer("delete", lambda: self.objects.pop(key, None) and None)

@implementer(IConsumer)
class _Collector:
    def __init__(self) -> None:
        self.data = bytearray()
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data


@dataclass
class PartRequest:
    """One PUT the uploader made: what it sent, and how to answer it."""

    url: str
    headers: dict[str, str]
    body: IBodyProducer
    answer: Deferred[PartResponse]
    received: _Collector = field(default_factory=_Collector)
    produced: Deferred[None] | None = None


@implementer(IFileRegistry)
class FakeFileRegistry:
    """
    Records the files the cloud's transfers register; with C{refuse} set,
    refuses them with that reason, as the registry does when the uploader
    may no longer add files to the project.
    """

    def __init__(self) -> None:
        self.registered: list[Transfer] = []
        self.refuse: str | None = None

    def register_file(self, conn: Any, transfer: Transfer) -> None:
        if self.refuse:
            raise Refused(self.refuse, "forbidden")
        self.registered.append(transfer)


@implementer(IUploadSink)
class FakeUploadSink:
    """
    Keeps staged uploads where they are (they stay C{staged} in the spool)
    and remembers what it was given, which is what tests look at.
    """

    def __init__(self) -> None:
        self.staged: dict[str, StagedUpload] = {}

    def upload_staged(self, upload: StagedUpload) -> Deferred[None]:
        self.staged[upload.upload_id] = upload
        return succeed(None)

    def retry_transfer(self, upload_id: str) -> Deferred[bool]:
        # Nothing here ever fails.
        return succeed(False)


@implementer(IPartTarget)
class FakePartTarget:
    """
    Records each PUT and lets the test answer it: C{requests[-1].answer}
    is the Deferred the uploader waits on.  C{consume=True} reads the body
    producer to the end first (into C{received}), as a server would.
    """

    def __init__(self, consume: bool = True) -> None:
        self.requests: list[PartRequest] = []
        self._consume = consume

    def put(self, url: str, headers: Mapping[str, str], body: IBodyProducer) -> Deferred[PartResponse]:
        request = PartRequest(url, dict(headers), body, Deferred(lambda d: self._cancelled(request, d)))
        self.requests.append(request)
        if self._consume:
            request.produced = body.startProducing(request.received)
        return request.answer

    def _cancelled(self, request: PartRequest, d: Deferred[PartResponse]) -> None:
        request.body.stopProducing()
        # As twisted.web's agent reports a cancelled request.
        d.errback(ResponseNeverReceived([Failure(CancelledError())]))

    def pending(self) -> list[PartRequest]:
        return [r for r in self.requests if not r.answer.called]


@implementer(ITusTarget)
class FakeTusTarget:
    """
    The cloud's receiver in a dictionary, as the edge's streams see it
    (L{ITusTarget}): partial uploads by URL, their bytes, the final
    upload's C{Upload-Concat}.  C{cut_after} makes the next PATCH take
    only that many bytes and then fail as a reset would; C{refuse_next}
    answers the next request with that status.  A PATCH answers once its
    body producer is done (or fails), all inside the test's clock.
    """

    def __init__(self, token: str = "") -> None:
        self.token = token
        self.partials: dict[str, bytearray] = {}
        self.lengths: dict[str, int] = {}
        self.final: str | None = None
        self.log: list[tuple[str, str, int | None]] = []
        self.cut_after: int | None = None
        self.refuse_next: int | None = None

    def request(self, method: str, url: str, headers: Mapping[str, str],
                body: IBodyProducer | None) -> Deferred[TusResponse]:
        offset = headers.get("Upload-Offset")
        self.log.append((method, url, int(offset) if offset is not None else None))
        if self.refuse_next is not None:
            status, self.refuse_next = self.refuse_next, None
            if body is not None:
                body.stopProducing()
            return succeed(TusResponse(status))
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            if body is not None:
                body.stopProducing()
            return succeed(TusResponse(401))
        if method == "POST" and "Upload-Concat" in headers and headers["Upload-Concat"].startswith("final;"):
            self.final = headers["Upload-Concat"]
            return succeed(TusResponse(201))
        if method == "POST":
            from relay.tus.protocol import parse_metadata

            first = parse_metadata(headers["Upload-Metadata"])["first"].decode()
            member = f"{url}{first}"
            self.partials.setdefault(member, bytearray())
            self.lengths[member] = int(headers["Upload-Length"])
            return succeed(TusResponse(201, location=member))
        if url not in self.partials:
            return succeed(TusResponse(404))
        if method == "HEAD":
            return succeed(TusResponse(200, len(self.partials[url])))
        assert method == "PATCH" and body is not None
        if int(headers["Upload-Offset"]) != len(self.partials[url]):
            body.stopProducing()
            return succeed(TusResponse(409, len(self.partials[url])))
        return self._patch(url, body)

    def _patch(self, url: str, body: IBodyProducer) -> Deferred[TusResponse]:
        cut, self.cut_after = self.cut_after, None
        target = self.partials[url]
        answer: Deferred[TusResponse] = Deferred()

        class Sink:
            def registerProducer(self, producer: Any, streaming: bool) -> None:
                pass

            def unregisterProducer(self) -> None:
                pass

            def write(self, data: bytes) -> None:
                nonlocal cut
                if answer.called:
                    return
                if cut is not None and len(data) >= cut:
                    target.extend(data[:cut])
                    body.stopProducing()
                    answer.errback(ConnectionResetError("reset by the fake"))
                    return
                if cut is not None:
                    cut -= len(data)
                target.extend(data)

        def done(_: Any) -> None:
            if not answer.called:
                answer.callback(TusResponse(204, len(target)))

        body.startProducing(Sink()).addCallbacks(done, lambda f: None if answer.called else answer.errback(f))
        return answer


class CappedTusTarget(FakeTusTarget):
    """
    L{FakeTusTarget} behind a link with a clock: each PATCH's bytes reach
    the receiver at C{rate} bytes a second at most, all of them together
    at C{aggregate} (shared equally), and a PATCH first takes C{buffer}
    bytes at once, as socket buffers do.  The PATCH answers when its last
    byte arrived.  A PATCH open C{reset_after} seconds is reset (what
    arrived is kept).  L{peak} is the most PATCHes open at once; L{times}
    when each request came.
    """

    def __init__(self, clock: Any, rate: float, aggregate: float, buffer: int, token: str = "",
                 step: float = 0.1, reset_after: float | None = None) -> None:
        super().__init__(token)
        self._clock = clock
        self._rate, self._aggregate, self._buffer, self._step = rate, aggregate, buffer, step
        self._reset_after = reset_after
        self._flows: list[_Flow] = []
        self._timer: Any = None
        self.peak = 0
        self.times: list[tuple[float, str]] = []

    def request(self, method: str, url: str, headers: Mapping[str, str],
                body: IBodyProducer | None) -> Deferred[TusResponse]:
        self.times.append((self._clock.seconds(), method))
        return super().request(method, url, headers, body)

    def _patch(self, url: str, body: IBodyProducer) -> Deferred[TusResponse]:
        flow = _Flow(self.partials[url], body, self._buffer)
        if self._reset_after is not None:
            timer = self._clock.callLater(self._reset_after, flow.reset)
            flow.answer.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
        self._flows.append(flow)
        self.peak = max(self.peak, len(self._flows))
        body.startProducing(flow).addCallbacks(flow.written, flow.failed)
        if self._timer is None:
            self._timer = self._clock.callLater(self._step, self._drain)
        return flow.answer

    def _drain(self) -> None:
        open_ = [f for f in self._flows if not f.answer.called]
        if open_:
            share = min(self._rate, self._aggregate / len(open_)) * self._step
            for flow in open_:
                flow.deliver(int(share))
        self._flows = [f for f in self._flows if not f.answer.called]
        self._timer = self._clock.callLater(self._step, self._drain) if self._flows else None


class _Flow:
    """One PATCH through L{CappedTusTarget}: what was written and not yet delivered."""

    def __init__(self, target: bytearray, body: IBodyProducer, buffer: int) -> None:
        self.target, self.body, self.buffer = target, body, buffer
        self.pending = bytearray()
        self.answer: Deferred[TusResponse] = Deferred()
        self.paused = False
        self.done = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.pending += data
        if len(self.pending) > self.buffer and not self.paused:
            self.paused = True
            self.body.pauseProducing()  # type: ignore[attr-defined]

    def deliver(self, amount: int) -> None:
        taken = self.pending[:amount]
        del self.pending[:amount]
        self.target.extend(taken)
        if self.paused and len(self.pending) <= self.buffer:
            self.paused = False
            self.body.resumeProducing()  # type: ignore[attr-defined]
        if self.done and not self.pending and not self.answer.called:
            self.answer.callback(TusResponse(204, len(self.target)))

    def written(self, _: Any) -> None:
        self.done = True
        if not self.pending and not self.answer.called:
            self.answer.callback(TusResponse(204, len(self.target)))

    def failed(self, failure: Failure) -> None:
        if not self.answer.called:
            self.answer.errback(failure)

    def reset(self) -> None:
        if not self.answer.called:
            self.pending.clear()
            self.body.stopProducing()
            self.answer.errback(ConnectionResetError("reset by the link"))
