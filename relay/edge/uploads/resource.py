"""
The HTTP face of the uploads component: tus 1.0 at C{/files/}, the
upload list at C{/api/uploads}, and C{POST /api/uploads/<id>/retry} (start
a failed transfer over), as Klein routes.

Each route authenticates, parses the tus headers (L{relay.edge.uploads.tus})
and asks L{UploadService}; a L{TusError} becomes its status code with a
plain-text message, anything unexpected a logged failure and a 500 without
a traceback.  Work that writes to the spool is shielded from Klein's
cancellation: when a client disconnects mid-body, the bytes that arrived are
still flushed and recorded.

Browsers: CORS answers the configured origins and exposes the tus headers.
tus requests are CSRF-safe without a token: every one but OPTIONS must carry
C{Tus-Resumable}, a header a cross-site page cannot send without a
preflight, which only the configured origins pass.  The retry route is not
tus: a session request needs its CSRF token, which the authenticator checks
(L{relay.edge.identity}) for every request that is not GET, HEAD or OPTIONS.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from relay.edge.auth import CHANGE_PASSWORD_FIRST, IAuthenticator, Principal
from relay.edge.uploads import tus
from relay.edge.uploads.service import Outcome, UploadService
from relay.edge.uploads.store import Upload
from relay.edge.web.errors import error_code
from relay.edge.web.routes import api_route
from relay.tus import protocol
from relay.tus.streaming import RequestBody

log = Logger()

Reply = tuple[int, dict[str, str], bytes]
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class UploadRoutes:
    """
    Adds the tus and upload-list routes to a Klein app.

    @param cors_origins: origins (C{https://app.example.com}) whose scripts
        may use the uploads API; C{"*"} allows any origin (without cookies).
    """

    def __init__(
        self,
        service: UploadService,
        authenticator: IAuthenticator,
        cors_origins: Sequence[str] = (),
        prefix: str = "/files/",
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.cors_origins = tuple(cors_origins)
        self.prefix = prefix

    def routes(self, app: Klein) -> None:
        base = self.prefix.rstrip("/")

        @app.route(base, methods=ALL_METHODS)
        @app.route(base + "/", methods=ALL_METHODS)
        async def collection(request: IRequest) -> bytes:
            return await self._tus(request, None)

        @app.route(base + "/<string:upload_id>", methods=ALL_METHODS)
        async def member(request: IRequest, upload_id: str) -> bytes:
            return await self._tus(request, upload_id)

        @api_route(app, "/uploads", ["GET", "OPTIONS"])
        async def listing(request: IRequest) -> bytes:
            return await self._api(request, None)

        @api_route(app, "/uploads/<string:upload_id>", ["GET", "OPTIONS"])
        async def one(request: IRequest, upload_id: str) -> bytes:
            return await self._api(request, upload_id)

        @api_route(app, "/uploads/<string:upload_id>/retry", ["POST", "OPTIONS"])
        async def retry(request: IRequest, upload_id: str) -> bytes:
            return await self._api(request, upload_id, retry=True)

    # tus

    async def _tus(self, request: IRequest, upload_id: str | None) -> bytes:
        method = request.method.decode("ascii", "replace")
        self._cors(request)
        try:
            if method == "OPTIONS":
                status, headers, body = self._options(request)
            else:
                protocol.check_version(_header(request, "Tus-Resumable"))
                handler = self._handler(method, upload_id)
                principal = await self._principal(request)
                status, headers, body = await handler(request, principal, upload_id)
        except protocol.TusError as e:
            status, headers, body = e.status, e.headers, (e.message + "\n").encode()
        except CancelledError:
            raise
        except Exception:
            log.failure("uploads: {method} {path} failed", method=method, path=request.path)
            status, headers, body = 500, {}, b"internal error; the upload keeps what arrived\n"
        if method != "OPTIONS":
            headers.setdefault("Tus-Resumable", protocol.VERSION)
        headers.setdefault("Cache-Control", "no-store")
        return _reply(request, status, headers, body)

    def _handler(
        self, method: str, upload_id: str | None
    ) -> Callable[[IRequest, Principal, Any], Awaitable[Reply]]:
        table = {"POST": self._create} if upload_id is None else {
            "HEAD": self._head, "PATCH": self._patch, "DELETE": self._delete,
        }
        handler = table.get(method)
        if handler is None:
            allowed = ", ".join(["OPTIONS", *table])
            raise protocol.TusError(405, f"{method} is not allowed here", {"Allow": allowed})
        return handler

    def _options(self, request: IRequest) -> Reply:
        headers = {
            "Tus-Resumable": protocol.VERSION,
            "Tus-Version": protocol.VERSION,
            "Tus-Extension": ",".join(tus.EXTENSIONS),
            "Tus-Max-Size": str(self.service.limits.max_size),
            "Tus-Checksum-Algorithm": ",".join(protocol.CHECKSUM_ALGORITHMS),
        }
        return 204, headers, b""

    async def _create(self, request: IRequest, principal: Principal, _: None) -> Reply:
        creation = tus.parse_creation(
            _header(request, "Upload-Length"),
            _header(request, "Upload-Defer-Length"),
            _header(request, "Upload-Metadata"),
            _header(request, "Upload-Concat"),
        )
        body: RequestBody | None = None
        checksum = None
        if protocol.is_upload_body(_header(request, "Content-Type")):
            if creation.concat == "final":
                raise protocol.TusError(400, "a final upload (Upload-Concat: final) takes no body")
            checksum = protocol.parse_checksum(_header(request, "Upload-Checksum"))
            body = _body(request)
        outcome = await _shielded(
            self.service.create(principal, creation, body, checksum, _aborter(request))
        )
        headers = self._state_headers(outcome.upload, with_offset=True)
        headers["Location"] = self.prefix + outcome.upload.id
        return 201, headers, b""

    async def _head(self, request: IRequest, principal: Principal, upload_id: str) -> Reply:
        upload = await self.service.status(principal, upload_id)
        headers = self._state_headers(upload, with_offset=True)
        if upload.length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(upload.length)
        if upload.raw_metadata:
            headers["Upload-Metadata"] = upload.raw_metadata
        if upload.concat == "partial":
            headers["Upload-Concat"] = "partial"
        elif upload.concat == "final":
            headers["Upload-Concat"] = "final;" + " ".join(self.prefix + p for p in upload.parts)
        return 200, headers, b""

    async def _patch(self, request: IRequest, principal: Principal, upload_id: str) -> Reply:
        protocol.check_content_type(_header(request, "Content-Type"))
        checksum = protocol.parse_checksum(_header(request, "Upload-Checksum"))
        outcome: Outcome = await _shielded(
            self.service.append(
                principal, upload_id, _header(request, "Upload-Offset"),
                _header(request, "Upload-Length"), checksum, _body(request), _aborter(request),
            )
        )
        headers = self._state_headers(outcome.upload, with_offset=True)
        if outcome.error is not None:
            error = outcome.error
            return error.status, {**headers, **error.headers}, (error.message + "\n").encode()
        return 204, headers, b""

    async def _delete(self, request: IRequest, principal: Principal, upload_id: str) -> Reply:
        await _shielded(self.service.terminate(principal, upload_id, _aborter(request)))
        return 204, {}, b""

    def _state_headers(self, upload: Upload, with_offset: bool) -> dict[str, str]:
        headers = {}
        if with_offset:
            headers["Upload-Offset"] = str(upload.offset)
        if upload.expires is not None and not upload.complete:
            headers["Upload-Expires"] = protocol.http_date(upload.expires)
        return headers

    # The upload list.

    async def _api(self, request: IRequest, upload_id: str | None, retry: bool = False) -> bytes:
        self._cors(request)
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"OPTIONS":
            return _reply(request, 204, {}, b"")
        try:
            principal = await self._principal(request)
            status, headers = 200, {}
            if upload_id is None:
                uploads = await self.service.listing(principal)
                document: Any = {"uploads": [self._describe(u) for u in uploads]}
            elif retry:
                document = self._describe(await _shielded(self.service.retry(principal, upload_id)))
                status = 202
            else:
                document = self._describe(await self.service.get_owned(principal, upload_id))
        except protocol.TusError as e:
            status, headers, document = e.status, e.headers, {
                "error": e.message,
                "code": "password_change_required" if e.message == CHANGE_PASSWORD_FIRST else error_code(e.status),
            }
        except CancelledError:
            raise
        except Exception:
            log.failure("uploads API failed")
            status, headers, document = 500, {}, {"error": "internal error", "code": "internal"}
        headers["Content-Type"] = "application/json"
        return _reply(request, status, headers, json.dumps(document).encode())

    def _describe(self, upload: Upload) -> dict[str, Any]:
        return {
            "id": upload.id,
            "url": self.prefix + upload.id,
            "filename": upload.filename,
            "filetype": upload.filetype,
            "project": upload.project,
            "length": upload.length,
            "offset": upload.offset,
            "state": upload.state.value,
            "progress": round(upload.progress, 4),
            "transferred": upload.transferred,
            "created": protocol.http_date(upload.created),
            "updated": protocol.http_date(upload.updated),
            "expires": protocol.http_date(upload.expires) if upload.expires else None,
            "error": upload.error or None,
        }

    # Shared.

    async def _principal(self, request: IRequest) -> Principal:
        principal = await self.authenticator.authenticate(request)
        if principal is None:
            raise protocol.TusError(401, "authentication required: an API key "
                                    "(Authorization: Bearer ...) or a session",
                               {"WWW-Authenticate": 'Bearer realm="relay"'})
        if principal.must_change_password:
            raise protocol.TusError(403, CHANGE_PASSWORD_FIRST)
        return principal

    def _cors(self, request: IRequest) -> None:
        origin = _header(request, "Origin")
        if origin is None or not self.cors_origins:
            return
        if "*" in self.cors_origins:
            request.setHeader(b"access-control-allow-origin", b"*")
        elif origin in self.cors_origins:
            request.setHeader(b"access-control-allow-origin", origin.encode())
            request.setHeader(b"access-control-allow-credentials", b"true")
            request.setHeader(b"vary", b"Origin")
        else:
            return
        request.setHeader(b"access-control-expose-headers", ", ".join(tus.RESPONSE_HEADERS).encode())
        if request.method == b"OPTIONS" and _header(request, "Access-Control-Request-Method"):
            request.setHeader(b"access-control-allow-methods", ", ".join(tus.METHODS).encode())
            request.setHeader(b"access-control-allow-headers", ", ".join(tus.REQUEST_HEADERS).encode())
            request.setHeader(b"access-control-max-age", b"86400")


def _header(request: IRequest, name: str) -> str | None:
    values = request.requestHeaders.getRawHeaders(name.encode())
    return values[0].decode("latin-1") if values else None


def _reply(request: IRequest, status: int, headers: dict[str, str], body: bytes) -> bytes:
    request.setResponseCode(status)
    for name, value in headers.items():
        request.setHeader(name.encode(), value.encode("latin-1", "replace"))
    if body and not request.responseHeaders.hasHeader(b"content-type"):
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    if status not in (204, 304) and request.method != b"HEAD":
        request.setHeader(b"content-length", str(len(body)).encode())
    return body


def _body(request: IRequest) -> RequestBody:
    """The request's streaming body, or (under a plain Site) its buffered content."""
    body = getattr(request, "body", None)
    if isinstance(body, RequestBody):
        return body
    content = request.content
    buffered = RequestBody(None, None, 1 << 62)
    if content is not None:
        content.seek(0)
        while chunk := content.read(1 << 20):
            buffered.deliver(chunk)
    buffered.expected = buffered.received
    buffered.finish()
    return buffered


def _aborter(request: IRequest) -> Callable[[], None]:
    abort = getattr(request, "abort", None)
    return abort if callable(abort) else (lambda: None)


def _shielded(coroutine: Any) -> Deferred[Any]:
    """
    Run C{coroutine} to its end even if the request is cancelled (the client
    went away): the returned Deferred may be cancelled, the work is not.
    """
    work = Deferred.fromCoroutine(coroutine)
    out: Deferred[Any] = Deferred(lambda _: None)

    def done(result: Any) -> None:
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)
        elif isinstance(result, Failure) and not result.check(protocol.TusError, CancelledError):
            log.failure("uploads: work after the client left failed", result)

    work.addBoth(done)
    return out
