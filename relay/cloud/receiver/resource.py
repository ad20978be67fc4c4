"""
The receiver over HTTP: a twisted.web resource under C{/transfers/}, whose
PATCH and POST bodies stream (L{relay.tus.streaming.StreamingRequest}).
Routes parse the tus headers (L{relay.tus.protocol}), hand them to the
L{TransferReceiver} and write its answer; a L{TusError} becomes its status
with a plain-text reason, and anything unexpected a 500 without details.

  - C{OPTIONS /transfers/...}: capabilities, no token needed.
  - C{POST /transfers/<transfer id>/}: a partial upload, or the final one.
  - C{HEAD}, C{PATCH}, C{DELETE /transfers/<transfer id>/<first part>}.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from relay.cloud.receiver.service import Answer, TransferReceiver, parse_first
from relay.tus import protocol
from relay.tus.streaming import RequestBody

log = Logger()

EXTENSIONS = ("creation", "checksum", "termination", "concatenation")
_TRANSFER = re.compile(r"/transfers/([0-9a-f]{32})/([^/]*)\Z")


class ReceiverResource(Resource):
    """See the module docstring."""

    isLeaf = True

    def __init__(self, receiver: TransferReceiver, max_size: int) -> None:
        super().__init__()
        self._receiver = receiver
        self._max_size = max_size

    def render(self, request: Any) -> Any:
        d = Deferred.fromCoroutine(self._route(request))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Any) -> None:
        log.failure("receiver: {method} {path} failed", failure,
                    method=request.method.decode("latin-1"), path=request.path.decode("latin-1", "replace"))
        self._write(request, 500, {}, b"internal error; try again")

    async def _route(self, request: Any) -> None:
        method = request.method.decode("latin-1")
        headers: dict[str, str] = {}
        try:
            if method == "OPTIONS":
                answer = Answer(204, self._capabilities())
            else:
                answer = await self._tus(request, method)
        except protocol.TusError as e:
            self._write(request, e.status, e.headers, e.message.encode() + b"\n")
            return
        headers.update(answer.headers)
        self._write(request, answer.status, headers, b"")

    def _capabilities(self) -> dict[str, str]:
        return {"Tus-Version": protocol.VERSION, "Tus-Extension": ",".join(EXTENSIONS),
                "Tus-Max-Size": str(self._max_size),
                "Tus-Checksum-Algorithm": ",".join(protocol.CHECKSUM_ALGORITHMS)}

    async def _tus(self, request: Any, method: str) -> Answer:
        protocol.check_version(_header(request, "Tus-Resumable"))
        match = _TRANSFER.match(request.path.decode("latin-1", "replace"))
        if match is None:
            raise protocol.TusError(404, "no such transfer")
        transfer_id, name = match.group(1), match.group(2)
        allowed = "POST" if not name else "HEAD, PATCH, DELETE"
        if method not in allowed.split(", "):
            raise protocol.TusError(405, f"{method} is not allowed here", {"Allow": allowed + ", OPTIONS"})
        transfer = await self._receiver.authorize(_header(request, "Authorization"), transfer_id)
        receiver = self._receiver
        if method == "POST":
            if protocol.is_upload_body(_header(request, "Content-Type")):
                raise protocol.TusError(400, "this receiver does not take bodies on creation")
            creation = protocol.parse_creation(
                _header(request, "Upload-Length"), _header(request, "Upload-Defer-Length"),
                _header(request, "Upload-Metadata"), _header(request, "Upload-Concat"),
            )
            return await receiver.create(transfer, creation)
        first = parse_first(name)
        if method == "HEAD":
            return await receiver.head(transfer, first, _abort)
        if method == "DELETE":
            return await receiver.delete(transfer, first, _abort)
        protocol.check_content_type(_header(request, "Content-Type"))
        offset = _header(request, "Upload-Offset")
        if offset is None:
            raise protocol.TusError(400, "Upload-Offset is required")
        checksum = protocol.parse_checksum(_header(request, "Upload-Checksum"))
        return await receiver.patch(transfer, first, protocol.parse_integer("Upload-Offset", offset),
                                    _body(request), checksum, _abort, request)

    def _write(self, request: Any, status: int, headers: dict[str, str], body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(status)
        request.setHeader(b"tus-resumable", protocol.VERSION.encode())
        for name, value in headers.items():
            request.setHeader(name.encode(), value.encode("latin-1", "replace"))
        if body:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if status not in (204, 304):
            request.setHeader(b"content-length", str(len(body)).encode())
        if request.method != b"HEAD" and body:
            request.write(body)
        request.finish()


def _header(request: Any, name: str) -> str | None:
    values = request.requestHeaders.getRawHeaders(name.encode())
    return values[0].decode("latin-1") if values else None


def _abort(request: Any) -> None:
    abort = getattr(request, "abort", None)
    if callable(abort):
        abort()


def _body(request: Any) -> RequestBody:
    body = getattr(request, "body", None)
    if isinstance(body, RequestBody):
        return body
    buffered = RequestBody(None, None, 1 << 62)
    content = request.content
    if content is not None:
        content.seek(0)
        while chunk := content.read(1 << 20):
            buffered.deliver(chunk)
    buffered.expected = buffered.received
    buffered.finish()
    return buffered
