"""
A twisted.web request that streams upload bodies instead of buffering them.

twisted.web hands a request to its resource only after the whole body has
arrived (in a temporary file past 100 KB).  For tus PATCH and creation
requests under the uploads prefix, L{StreamingRequest} instead routes the
request as soon as its headers are in, and hands the body to the route as
it arrives through a L{RequestBody}: bounded memory, and a transport that is
paused while the consumer (the spool writer) lags.  Every other request is
left to twisted.web.

Timeouts: the edge's channel (L{relay.edge.web.site.EdgeChannel}) gives
each request's headers a deadline and holds bodies and responses to a
minimum rate; while a body streams, a separate body idle timeout applies
too, suspended while relay itself has paused the transport (which the
channel's rate check also allows for: L{RequestBody.pauses}).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from twisted.web import server


class BodyInterrupted(Exception):
    """The connection ended before the whole body arrived."""


class RequestBody:
    """
    A request body as it arrives.  The channel pushes chunks in
    (L{deliver}, L{finish}, L{fail}); one consumer takes them out in batches
    with L{read}.  When C{high_water} bytes wait unread, the transport is
    paused until the consumer catches up.

    @ivar expected: the Content-Length, or C{None} for a chunked body.
    @ivar received: bytes that arrived so far (read or not).
    """

    def __init__(
        self,
        producer: IPushProducer | None,
        expected: int | None,
        high_water: int,
        on_pause: Callable[[bool], None] = lambda paused: None,
    ) -> None:
        self.expected = expected
        self.received = 0
        self.ended = False
        self._producer = producer
        self._high_water = high_water
        self._on_pause = on_pause
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._failure: Failure | None = None
        self._waiter: Deferred[list[bytes]] | None = None
        self._paused = False
        self._discarding = False

    @property
    def interrupted(self) -> bool:
        return self._failure is not None

    #: How often relay has paused the transport so far.
    pauses = 0

    @property
    def paused(self) -> bool:
        """relay paused the transport: the consumer lags, not the client."""
        return self._paused

    @property
    def done(self) -> bool:
        """No more bytes will arrive."""
        return self.ended or self._failure is not None

    def deliver(self, data: bytes) -> None:
        self.received += len(data)
        if self._discarding or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._waiter is not None:
            self._wake()
        elif self._buffered >= self._high_water:
            self._pause()

    def finish(self) -> None:
        self.ended = True
        self._resume()
        self._wake()

    def fail(self, reason: Failure) -> None:
        if self.ended:
            return
        self._failure = reason
        self._wake()

    def read(self) -> Deferred[list[bytes]]:
        """
        Everything that arrived and was not read yet (at least one chunk),
        C{[]} once the body has ended; fails with L{BodyInterrupted} once
        the connection is gone and every byte that arrived has been read.
        """
        if self._waiter is not None:
            raise RuntimeError("RequestBody.read() is already waiting")
        d: Deferred[list[bytes]] = Deferred()
        self._waiter = d
        if self._chunks or self.done:
            self._wake()
        return d

    def discard(self) -> None:
        """Drop whatever arrives from now on (the request has been answered)."""
        self._discarding = True
        self._chunks.clear()
        self._buffered = 0
        self._resume()

    def _wake(self) -> None:
        d, self._waiter = self._waiter, None
        if d is None:
            return
        if self._chunks:
            chunks = list(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            self._resume()
            d.callback(chunks)
        elif self._failure is not None:
            d.errback(BodyInterrupted(self._failure.getErrorMessage()))
        elif self.ended:
            d.callback([])
        else:
            self._waiter = d

    def _pause(self) -> None:
        if not self._paused and self._producer is not None:
            self._paused = True
            self.pauses += 1
            self._producer.pauseProducing()
            self._on_pause(True)

    def _resume(self) -> None:
        if self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()
            self._on_pause(False)


@dataclass(frozen=True)
class StreamingSettings:
    """
    What L{StreamingRequest} needs to know.

    @ivar prefix: the path prefix whose PATCH and POST bodies stream.
    @ivar body_idle_timeout: seconds a streaming body may go without a byte.
    @ivar high_water: unread bytes at which the transport is paused.
    @ivar read_size: bytes read from the socket at once while a body streams.
    """

    reactor: IReactorTime
    prefix: bytes = b"/files"
    body_idle_timeout: float = 60.0
    high_water: int = 1 << 20
    read_size: int = 1 << 20


_OVERRIDABLE = {b"PATCH", b"DELETE", b"HEAD", b"POST", b"GET", b"OPTIONS"}


class StreamingRequest(server.Request):
    """
    A L{server.Request} that streams the bodies of tus PATCH and POST
    requests to the route (C{request.body}, a L{RequestBody}) and honours
    C{X-HTTP-Method-Override} under the uploads prefix.  C{body} is C{None}
    for other requests, which twisted.web handles as usual.
    """

    settings: StreamingSettings
    body: RequestBody | None = None
    _started = False
    _finish_pending = False
    _start_call: IDelayedCall | None = None
    _header_timeout: Any = None

    def __init__(self, *args: Any, settings: StreamingSettings, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings

    # Called by the channel.

    def gotLength(self, length: int | None) -> None:
        # The channel has parsed the request line and every header by now;
        # the request itself learns them only in requestReceived.
        channel: Any = self.channel
        command, path, version = channel._command, channel._path, channel._version
        if not self.streams(command, path):
            super().gotLength(length)
            return
        self.content = BytesIO()
        self.body = RequestBody(channel.transport, length, self.settings.high_water,
                                on_pause=self._paused)
        self._set_request_line(command, path, version)
        # Bigger reads for a big body: far fewer trips through the reactor
        # and the HTTP parser per byte (twisted's TCP transport reads 64 KiB).
        transport = channel.transport
        if isinstance(getattr(transport, "bufferSize", None), int):
            transport.bufferSize = max(transport.bufferSize, self.settings.read_size)
        self._header_timeout = channel.setTimeout(self.settings.body_idle_timeout)
        # Route on the next turn: allHeadersReceived may still send a
        # 100 Continue, which must precede any response.
        self._start_call = self.settings.reactor.callLater(0, self._start)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is None:
            super().handleContentChunk(data)
        else:
            self.body.deliver(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body is None:
            super().requestReceived(command, path, version)
            return
        channel: Any = self.channel
        # allContentReceived has just stopped the channel's timeout for the
        # response; what it restores afterwards is the idle (header) timeout.
        channel.setTimeout(None)
        channel._savedTimeOut = self._header_timeout
        self.body.finish()
        self._start()
        if self._finish_pending:
            self._finish_pending = False
            super().finish()

    def connectionLost(self, reason: Failure) -> None:
        if self._start_call is not None and self._start_call.active():
            self._start_call.cancel()
        if self.body is not None:
            self.body.fail(reason)
        super().connectionLost(reason)

    def streams(self, command: bytes, path: bytes) -> bool:
        """
        Whether this request's body streams to its route (a tus PATCH or
        POST under the prefix), once its headers are in.
        """
        return self._effective_method(command) in (b"PATCH", b"POST") and self._under_prefix(path)

    # Called by resources.

    def finish(self) -> None:
        # The response may be complete before the body is: the channel must
        # not start on the next request until the body has been read off
        # the connection, so the rest of it is discarded and the finish
        # waits for requestReceived.
        if self.body is not None and not self.body.done:
            self.body.discard()
            self._finish_pending = True
            return
        super().finish()

    def process(self) -> None:
        # The override is a tus feature: other routes keep their methods.
        if self.body is None and self._under_prefix(self.path):
            self.method = self._effective_method(self.method)
        super().process()

    def abort(self) -> None:
        """Drop the connection at once (a newer request took the upload over)."""
        channel: Any = self.channel
        if channel is not None and channel.transport is not None:
            channel.transport.abortConnection()

    # Internals.

    def _start(self) -> None:
        if self._started or self._disconnected:
            return
        self._started = True
        if self._start_call is not None and self._start_call.active():
            self._start_call.cancel()
        self.process()

    def _paused(self, paused: bool) -> None:
        # relay paused the transport (the disk lags): that is not the
        # client idling, so the body idle timeout waits too.
        channel: Any = self.channel
        if channel is not None and not self.body_done():
            channel.setTimeout(None if paused else self.settings.body_idle_timeout)

    def body_done(self) -> bool:
        return self.body is None or self.body.done

    def _effective_method(self, method: bytes) -> bytes:
        override = self.requestHeaders.getRawHeaders(b"x-http-method-override")
        if override:
            candidate = override[0].strip().upper()
            if candidate in _OVERRIDABLE:
                return candidate
        return method

    def _under_prefix(self, path: bytes) -> bool:
        prefix = self.settings.prefix
        bare = path.split(b"?", 1)[0]
        return bare == prefix or bare.startswith(prefix + b"/")

    def _set_request_line(self, command: bytes, path: bytes, version: bytes) -> None:
        """What requestReceived would set, for a request routed early."""
        self.method = self._effective_method(command)
        self.uri = path
        self.clientproto = version
        self.args = {}
        bare, _, query = path.partition(b"?")
        self.path = bare
        if query:
            self.args = parse_qs(query, keep_blank_values=True)


def streaming_request_factory(settings: StreamingSettings) -> Callable[..., StreamingRequest]:
    """A C{requestFactory} for L{server.Site}."""

    def factory(*args: Any, **kwargs: Any) -> StreamingRequest:
        return StreamingRequest(*args, settings=settings, **kwargs)

    return factory
