"""
The edge's side of the cloud's tus receiver: HTTP requests to it
(L{ITusTarget}; L{HTTPTusTarget} is treq over a persistent connection
pool, the fake is L{relay.testing.transfer.FakeTusTarget}) and the header
values relay's partial uploads carry (L{relay.tus.protocol}).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _StandardEndpointFactory,
)
from twisted.web.iweb import IBodyProducer
from zope.interface import Interface, implementer

from relay.edge.transfer.uploader import _QuietFactory, bounded_body
from relay.tus.protocol import OFFSET_CONTENT_TYPE, VERSION, encode_metadata

#: Error bodies are a line of text; never read more of an answer.
_MAX_BODY = 16 * 1024


@dataclass(frozen=True)
class TusResponse:
    """What the receiver answered: status, C{Upload-Offset}, C{Location}, reason."""

    status: int
    offset: int | None = None
    location: str = ""
    reason: str = ""


class ITusTarget(Interface):
    """Where the tus requests of the transfer stage go."""

    def request(method: str, url: str, headers: Mapping[str, str],
                body: IBodyProducer | None) -> Deferred[TusResponse]:
        """
        Send one request; fires with the answer whatever its status, fails
        on a network error.  Cancelling it aborts the request.
        """


#: The kernel's send buffer of each stream's connection.  Left to itself
#: Linux lets a connection take several MiB at once, most of a part: the
#: stream count would then measure the buffers, not the link.  (Linux
#: doubles it; 512 KiB over a 300 ms round trip still carries 1.7 MiB/s
#: per stream.)
SEND_BUFFER = 256 * 1024


@implementer(ITusTarget)
class HTTPTusTarget:
    """treq over one persistent pool of C{connections} per host."""

    def __init__(self, reactor: Any, connections: int = 32, *, connect_timeout: float = 20.0,
                 idle_timeout: int = 50, send_buffer: int = SEND_BUFFER) -> None:
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = connections
        self._pool.cachedConnectionTimeout = int(idle_timeout)
        self._pool.retryAutomatically = False
        self._pool._factory = _QuietFactory
        endpoints = _SendBufferEndpoints(
            _StandardEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), connect_timeout, None), send_buffer)
        self._http = HTTPClient(Agent.usingEndpointFactory(reactor, endpoints, pool=self._pool))
        self._reactor = reactor

    def request(self, method: str, url: str, headers: Mapping[str, str],
                body: IBodyProducer | None) -> Deferred[TusResponse]:
        d = self._http.request(method, url, data=body, headers={k: [v] for k, v in headers.items()},  # type: ignore[arg-type]
                               allow_redirects=False, unbuffered=True, reactor=self._reactor)
        return d.addCallback(lambda response: Deferred.fromCoroutine(_answer(response)))

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()


class _SendBufferEndpoints:
    """Endpoints whose connections get a send buffer of C{size} bytes."""

    def __init__(self, inner: Any, size: int) -> None:
        self._inner, self._size = inner, size

    def endpointForURI(self, uri: Any) -> Any:
        return _SendBufferEndpoint(self._inner.endpointForURI(uri), self._size)


@implementer(IStreamClientEndpoint)
class _SendBufferEndpoint:
    def __init__(self, inner: Any, size: int) -> None:
        self._inner, self._size = inner, size

    def connect(self, factory: Any) -> Deferred[Any]:
        return self._inner.connect(factory).addCallback(self._sized)

    def _sized(self, protocol: Any) -> Any:
        # Through TLS the socket is the transport's transport.
        transport = getattr(protocol, "transport", None)
        for _ in range(3):
            handle = getattr(transport, "getHandle", lambda: None)()
            if isinstance(handle, socket.socket):
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._size)
                break
            transport = getattr(transport, "transport", None)
        return protocol


async def _answer(response: Any) -> TusResponse:
    body = await bounded_body(response, _MAX_BODY)

    def header(name: bytes) -> str:
        return (response.headers.getRawHeaders(name) or [b""])[0].decode("latin-1").strip()

    raw = header(b"upload-offset")
    return TusResponse(response.code, int(raw) if raw.isdigit() else None, header(b"location"),
                       body.decode("utf-8", "replace").strip()[:300])


def headers(token: str, **more: str) -> dict[str, str]:
    """The headers of every request: the protocol version and the token."""
    values = {"Tus-Resumable": VERSION, "Authorization": f"Bearer {token}"}
    values.update({k.replace("_", "-"): v for k, v in more.items()})
    return values


def creation_headers(token: str, first: int, last: int, length: int, md5s: bytes) -> dict[str, str]:
    """A partial upload of S3 parts C{first}-C{last} (C{md5s}: their raw MD5s)."""
    return headers(token, Upload_Length=str(length), Upload_Concat="partial",
                   Upload_Metadata=encode_metadata({"first": str(first), "last": str(last), "md5s": md5s}))


def patch_headers(token: str, offset: int) -> dict[str, str]:
    """A PATCH from C{offset} (the body producer's length is the Content-Length)."""
    return headers(token, Upload_Offset=str(offset), Content_Type=OFFSET_CONTENT_TYPE)
