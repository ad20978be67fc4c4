"""
The edge's side of the cloud's tus receiver: HTTP requests to it
(L{ITusTarget}; L{HTTPTusTarget} is treq over a persistent connection
pool, the fake is L{relay.testing.transfer.FakeTusTarget}) and the header
values relay's partial uploads carry (L{relay.tus.protocol}).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
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


@implementer(ITusTarget)
class HTTPTusTarget:
    """treq over one persistent pool of C{connections} per host."""

    def __init__(self, reactor: Any, connections: int = 32, *, connect_timeout: float = 20.0,
                 idle_timeout: int = 50) -> None:
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = connections
        self._pool.cachedConnectionTimeout = int(idle_timeout)
        self._pool.retryAutomatically = False
        self._pool._factory = _QuietFactory
        self._http = HTTPClient(Agent(reactor, connectTimeout=connect_timeout, pool=self._pool))
        self._reactor = reactor

    def request(self, method: str, url: str, headers: Mapping[str, str],
                body: IBodyProducer | None) -> Deferred[TusResponse]:
        d = self._http.request(method, url, data=body, headers={k: [v] for k, v in headers.items()},  # type: ignore[arg-type]
                               allow_redirects=False, unbuffered=True, reactor=self._reactor)
        return d.addCallback(lambda response: Deferred.fromCoroutine(_answer(response)))

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()


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
