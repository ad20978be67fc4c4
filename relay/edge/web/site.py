"""
The edge's HTTP listener: a L{Site} whose channels hold the limits every
client meets before any route sees its request (C{docs/security.md}).

  - Connections: at most C{max_connections} open, and
    C{max_connections_per_address} from one address; more are closed at
    once.
  - Headers: at most C{max_header_bytes} and C{max_headers} (400), all of
    them within C{header_timeout} of the connection opening or of the
    previous response ending.  This is a deadline: trickling a byte at a
    time does not extend it.
  - Bodies outside the streamed prefix (C{/files/}, where the tus limits
    apply): at most C{max_body} bytes, refused with 413 from
    C{Content-Length} before any byte of the body is read, or as soon as a
    chunked body passes the limit; bodies are held in memory, never in a
    temporary file.
  - Rate: a body arriving, or a response leaving, must move C{min_rate}
    bytes in every C{rate_window} seconds, or the connection is dropped.
    The edge's own pauses (an upload waiting for the disk) do not count.
  - Answers: C{X-Content-Type-Options: nosniff} on every one,
    C{Strict-Transport-Security} under TLS, and a C{Server} header without
    a version.
"""

from __future__ import annotations

import resource
from collections import Counter
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.internet.interfaces import IAddress, IDelayedCall, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from relay.edge.login_throttle import address_group
from relay.edge.web.errors import error_json

log = Logger()

SERVER = b"relay"
HSTS = b"max-age=31536000"


@dataclass(frozen=True)
class ListenerLimits:
    """
    What every connection to the edge is held to (the C{[web]} table and
    C{uploads.header_timeout}).

    @ivar streamed: the path prefix whose bodies stream to their route and
        are bounded there (the tus receiver's C{Tus-Max-Size} and quota).
    @ivar linger: after a refusal, the rest of a body is read and dropped
        for this many seconds or C{linger_bytes}, whichever comes first (so
        that the client sees the answer rather than a reset).
    """

    max_body: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    header_timeout: float = 30.0
    min_rate: int = 1024
    rate_window: float = 30.0
    max_connections: int = 2048
    max_connections_per_address: int = 64
    streamed: bytes = b"/files"
    linger: float = 2.0
    linger_bytes: int = 1 << 20


class _BoundedBody(BytesIO):
    """
    A request body in memory that tells its channel when it passes the limit
    (and then keeps nothing more).
    """

    def __init__(self, limit: int, over: Any) -> None:
        super().__init__()
        self._limit = limit
        self._over = over
        self.overflowed = False

    def write(self, data: Any) -> int:
        if self.overflowed:
            return 0
        if self.tell() + len(data) > self._limit:
            self.overflowed = True
            self._over()
            return 0
        return super().write(data)


def _utf8_target(path: bytes, host: bytes) -> bool:
    """
    Whether the request target's path (percent-decoded) and the Host are
    UTF-8, as the routes need (Klein would log a traceback for each).
    """
    try:
        unquote_to_bytes(path.split(b"?", 1)[0]).decode("utf-8")
        host.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _unsent(transport: Any) -> int:
    """
    Bytes a transport holds that the kernel has not taken yet (Twisted's
    FileDescriptor buffers; for TLS, those of the TCP transport below).
    """
    while transport is not None and not hasattr(transport, "dataBuffer"):
        transport = getattr(transport, "transport", None)
    if transport is None:
        return 0
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class EdgeChannel(HTTPChannel):
    """
    An L{HTTPChannel} held to the site's L{ListenerLimits}.
    """

    site: EdgeSite
    _host: str | None = None
    _refused = False
    _deadline: IDelayedCall | None = None
    _rate_check: IDelayedCall | None = None
    _linger: IDelayedCall | None = None
    _bounded: _BoundedBody | None = None
    _body_started: float | None = None
    _seen_pauses = 0

    def connectionMade(self) -> None:
        limits = self.site.limits
        self.maxHeaders = limits.max_headers
        self.totalHeadersSize = limits.max_header_bytes
        self.MAX_LENGTH = limits.max_header_bytes
        self._secure = ISSLTransport.providedBy(self.transport)
        self._received = 0
        self._written = 0
        self._delivered = 0
        self._stalled = False
        super().connectionMade()
        self._arm_deadline()
        self._rate_check = self.callLater(limits.rate_window, self._check_rate)

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        super().dataReceived(data)

    # -- headers ---------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(431, b"Request Header Fields Too Large",
                         f"the request line and headers may be at most {self.totalHeadersSize} bytes")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(431, b"Request Header Fields Too Large",
                     f"the request line and headers may be at most {self.totalHeadersSize} bytes")

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(431, b"Request Header Fields Too Large",
                         f"a request may have at most {self.maxHeaders} headers")
            return False
        return bool(super().headerReceived(line))

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(400, b"Bad Request", "malformed request")

    # -- the header deadline ---------------------------------------------------

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        later: Any = self.callLater
        self._deadline = later(self.site.limits.header_timeout, self._too_slow, "headers")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def requestDone(self, request: Any) -> None:
        self._bounded = None
        self._body_started = None
        # Armed first: a pipelined request parsed from the buffer inside
        # requestDone cancels it when its headers are complete.
        if self.persistent:
            self._arm_deadline()
        super().requestDone(request)

    # -- bodies ----------------------------------------------------------------

    def allHeadersReceived(self) -> None:
        self._cancel_deadline()
        self._received = 0
        self._body_started = self.site.reactor.seconds() if self.length != 0 else None
        request = self.requests[-1]
        if not _utf8_target(self._path, request.requestHeaders.getRawHeaders(b"host", [b""])[0]):
            self._refuse(400, b"Bad Request", "the URL and Host must be UTF-8 (percent-encoded or not)")
            return
        streams = getattr(request, "streams", None)
        if callable(streams) and streams(self._command, self._path):
            super().allHeadersReceived()
            return
        limit = self.site.limits.max_body
        if self.length is not None and self.length > limit:
            self._refuse(413, b"Content Too Large", f"the request body may be at most {limit} bytes here")
            return
        # What HTTPChannel.allHeadersReceived does, but the body goes to
        # memory (it is small) instead of a temporary file.
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        self._bounded = _BoundedBody(limit, lambda: self._refuse(
            413, b"Content Too Large", f"the request body may be at most {limit} bytes here"))
        request.content = self._bounded
        expect = request.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue" and self._version == b"HTTP/1.1":
            self._send100Continue()

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:  # the rest of what the refused request's read brought
            self._drop(data)
            return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if self._refused:
            return
        super().allContentReceived()

    def _refuse(self, status: int, reason: bytes, message: str) -> None:
        """
        Answer at once and close: the rest of the body is read and dropped
        for C{linger} seconds, so that the client reads the answer.
        """
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._dropped = 0
        body = error_json(status, message)
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\n"
            b"server: %s\r\n\r\n" % (status, reason, len(body), SERVER)
        )
        self.transport.write(head + body)
        self.dataReceived = self._drop  # type: ignore[method-assign]
        self.setTimeout(None)
        self._cancel_deadline()
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if callable(half_close):
            half_close()
        else:
            self.transport.loseConnection()
        self._linger = self.callLater(self.site.limits.linger, self._abort)
        log.info("refused a request from {peer}: {status} {reason}", peer=self._host, status=status,
                 reason=message)

    def _drop(self, data: bytes) -> None:
        self._dropped += len(data)
        if self._dropped > self.site.limits.linger_bytes:
            self._abort()

    # -- rates -----------------------------------------------------------------

    def _receiving_body(self) -> bool:
        """
        A body has been arriving for a whole window at least (so the last
        window's count is all body), and relay has not paused it.
        """
        started = self._body_started
        if started is None or self.site.reactor.seconds() - started < self.site.limits.rate_window:
            return False
        if self._transferDecoder is None or self._handlingRequest or not self.requests:
            return False
        body = getattr(self.requests[-1], "body", None)
        pauses = getattr(body, "pauses", 0)
        paused_lately, self._seen_pauses = pauses != self._seen_pauses, pauses
        # Paused now, or since the last look: the disk lagged, not the client.
        return not paused_lately and not getattr(body, "paused", False)

    def _check_rate(self) -> None:
        limits = self.site.limits
        self._rate_check = self.callLater(limits.rate_window, self._check_rate)
        received, self._received = self._received, 0
        if self._receiving_body() and received < limits.min_rate:
            self._too_slow("body")
            return
        # A response is held up when the transport buffers what was written
        # or has paused the response's producer (the client reads slowly).
        unsent = _unsent(self.transport)
        delivered = self._written - unsent
        moved, self._delivered = delivered - self._delivered, delivered
        held = unsent > 0 or self._waitingForTransport
        was_held, self._stalled = self._stalled, held
        if was_held and held and moved < limits.min_rate:
            self._too_slow("response")

    def _too_slow(self, what: str) -> None:
        log.info("dropped {peer}: its {what} was too slow", peer=self._host, what=what)
        self._abort()

    def _abort(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    # -- answers ---------------------------------------------------------------

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Any) -> None:
        if isinstance(headers, Headers):
            headers.setRawHeaders(b"server", [SERVER])
            if not headers.hasHeader(b"x-content-type-options"):
                headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
            if self._secure and not headers.hasHeader(b"strict-transport-security"):
                headers.setRawHeaders(b"strict-transport-security", [HSTS])
        super().writeHeaders(version, code, reason, headers)

    def write(self, data: bytes) -> None:
        self._written += len(data)
        super().write(data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        self._written += sum(map(len, iovec))
        super().writeSequence(iovec)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for call in (self._deadline, self._rate_check, self._linger):
            if call is not None and call.active():
                call.cancel()
        self.site.connection_closed(self._host)
        super().connectionLost(reason)


class EdgeSite(Site):
    """
    A L{Site} of L{EdgeChannel}s that counts its connections.
    """

    protocol = EdgeChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.limits = limits
        self.displayTracebacks = False
        self.open = 0
        self._by_host: Counter[str] = Counter()

    def buildProtocol(self, addr: IAddress | None) -> Any:
        host = getattr(addr, "host", None)
        if host is not None:
            host = address_group(host)
        limits = self.limits
        if self.open >= limits.max_connections or (
            host is not None and self._by_host[host] >= limits.max_connections_per_address
        ):
            return None  # closed at once
        channel = super().buildProtocol(addr)
        if channel is None:
            return None
        self.open += 1
        if host is not None:
            self._by_host[host] += 1
        channel._host = host
        return channel

    def connection_closed(self, host: str | None) -> None:
        self.open -= 1
        if host is not None:
            self._by_host[host] -= 1
            if self._by_host[host] <= 0:
                del self._by_host[host]


def ensure_open_files(needed: int) -> int:
    """
    Make sure this process may open C{needed} file descriptors: raise the
    soft C{RLIMIT_NOFILE} up to the hard one if need be.  Returns the
    limit; raises C{SystemExit} naming the fix when the hard limit is lower.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(
                f"relay-edge: the open-file limit is {hard} but web.min_open_files is {needed}; "
                "raise it (LimitNOFILE= in the systemd unit, ulimit -n) or lower web.max_connections"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return soft
