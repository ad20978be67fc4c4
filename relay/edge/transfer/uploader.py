"""
Part PUTs: many at once, each retried on its own until S3 holds it.

L{PartUploader.send} moves one part: it waits for a presigned URL, takes one
of the edge-wide connection slots (default 16) only for the attempt itself,
streams the part from the spool with its C{Content-MD5}, and judges the
answer.  An attempt ends when S3 answers, when no byte has moved for
C{stall_timeout} seconds (a silently stalled link), or after
C{part_timeout}.  Between attempts it backs off (bounded exponential, full
jitter); a URL S3 refused, or one that keeps failing, is dropped so the next
attempt gets a fresh one.  S3 saying C{NoSuchUpload} ends the whole
transfer (L{UploadGone}); a spool copy that cannot be read ends it for good
(L{StagedCopyDamaged}).

The HTTP client is treq over one persistent L{HTTPConnectionPool}, so a
connection that survives the link is reused for the next part (no new TCP
handshake, no new slow start).  Presigned URLs are never logged whole
(L{relay.edge.transfer.urls.redact}).
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.iweb import IBodyProducer
from zope.interface import Interface, implementer

from relay.edge.transfer.body import PartBody, StagedCopyDamaged
from relay.edge.transfer.planner import Part
from relay.edge.transfer.urls import redact
from relay.link.backoff import Backoff

_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
#: Answers that mean "this URL will not do" rather than "this part will not do".
_URL_REFUSED = frozenset({"AccessDenied", "ExpiredToken", "RequestExpired", "SignatureDoesNotMatch"})
#: Error bodies are small XML documents; never read more of an answer.
_MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class PartResponse:
    """What S3 answered to a part PUT: status, ETag (unquoted), error code."""

    status: int
    etag: str = ""
    code: str = ""


class IPartTarget(Interface):
    """
    Where part bodies go: S3 over HTTP (L{HTTPPartTarget}; the fake is
    L{relay.testing.transfer.FakePartTarget}).
    """

    def put(url: str, headers: Mapping[str, str], body: IBodyProducer) -> Deferred[PartResponse]:
        """
        PUT C{body} to C{url}.  Fires with S3's answer whatever its status;
        fails on a network error.  Cancelling it aborts the request.
        """


class _QuietFactory(_HTTP11ClientFactory):
    # One line per connection at info level drowns a log on a link that
    # resets connections all the time.
    noisy = False


@implementer(IPartTarget)
class HTTPPartTarget:
    """
    treq over a persistent connection pool of C{connections} per host.
    """

    def __init__(self, reactor: Any, connections: int = 16, *, connect_timeout: float = 30.0,
                 idle_timeout: int = 50) -> None:
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = connections
        self._pool.cachedConnectionTimeout = int(idle_timeout)
        # A body producer cannot be replayed: retries are ours.
        self._pool.retryAutomatically = False
        self._pool._factory = _QuietFactory
        self._http = HTTPClient(Agent(reactor, connectTimeout=connect_timeout, pool=self._pool))
        self._reactor = reactor

    def put(self, url: str, headers: Mapping[str, str], body: IBodyProducer) -> Deferred[PartResponse]:
        d = self._http.put(url, data=body, headers={k: [v] for k, v in headers.items()},  # type: ignore[arg-type]
                           allow_redirects=False, unbuffered=True, reactor=self._reactor)
        return d.addCallback(lambda response: Deferred.fromCoroutine(_answer(response)))

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()


async def bounded_body(response: Any, limit: int) -> bytes:
    """
    An answer's body, read to its end (so the connection can be reused)
    but kept only up to C{limit} bytes: an error document, never a file.
    """
    chunks: list[bytes] = []
    size = [0]

    def collect(data: bytes) -> None:
        if size[0] < limit:
            chunks.append(data[: limit - size[0]])
            size[0] += len(data)

    await treq.collect(response, collect)
    return b"".join(chunks)


async def _answer(response: Any) -> PartResponse:
    body = await bounded_body(response, _MAX_BODY)
    etag = (response.headers.getRawHeaders(b"etag") or [b""])[0].decode("latin-1").strip('"').lower()
    found = _CODE.search(body)
    return PartResponse(response.code, etag, found.group(1).decode("latin-1") if found else "")


class UploadGone(Exception):
    """S3 no longer knows the multipart upload: the transfer starts over."""


class PartFailed(Exception):
    """A part cannot be sent (S3 keeps refusing it for a reason retrying won't fix)."""


@dataclass(frozen=True)
class RetryPolicy:
    """
    @ivar stall_timeout: an attempt during which no byte moved for this
        long is abandoned.
    @ivar part_timeout: an attempt is abandoned after this long anyway.
    @ivar max_refusals: answers that retrying will not change (bad digest,
        other 4xx) tolerated before the part fails.
    """

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    stall_timeout: float = 45.0
    part_timeout: float = 1800.0
    max_refusals: int = 5


@dataclass
class PartStats:
    """Counters the service exposes as metrics."""

    attempts: int = 0
    retries: int = 0
    stalls: int = 0
    refreshed_urls: int = 0
    bytes_sent: int = 0


class PartUploader:
    """
    Sends parts through an L{IPartTarget} (see the module docstring).

    @param slots: the edge-wide limit on PUTs in flight.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        target: IPartTarget,
        slots: DeferredSemaphore,
        policy: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._target = target
        self.slots = slots
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()
        self.stats = PartStats()
        self.in_flight = 0

    async def send(
        self,
        part: Part,
        md5: str,
        url_for: Callable[[int], Deferred[str]],
        invalidate: Callable[[int, str], None],
        open_body: Callable[[Part], PartBody],
    ) -> str:
        """
        PUT C{part} until S3 holds it; returns its ETag (the part's MD5 in hex).

        @raise UploadGone: S3 answered C{NoSuchUpload}.
        @raise PartFailed: S3 refused the part C{max_refusals} times.
        @raise StagedCopyDamaged: the part cannot be read from the spool.
        """
        backoff = Backoff(self._clock, initial=self.policy.initial, factor=self.policy.factor,
                          cap=self.policy.cap, rng=self._rng)
        expected = base64.b64decode(md5).hex()
        refusals = 0
        began = self._clock.seconds()
        attempts = 0
        while True:
            # A network failure keeps the URL: asking for another crosses
            # the same bad link, and the URL book retires it before expiry.
            url = await url_for(part.number)
            await self.slots.acquire()
            attempts += 1
            try:
                outcome = await self._attempt(part, md5, url, open_body)
            finally:
                self.slots.release()
            if isinstance(outcome, PartResponse):
                if outcome.status == 200 and outcome.etag in (expected, ""):
                    self.log.debug("part {number} in S3 after {attempts} attempt(s), {seconds:.1f}s",
                                   number=part.number, attempts=attempts,
                                   seconds=self._clock.seconds() - began)
                    return expected
                verdict = self._judge(part, outcome, url, expected)
                if verdict == "gone":
                    raise UploadGone(f"part {part.number}: S3 says {outcome.code or outcome.status}")
                if verdict == "url":
                    invalidate(part.number, url)
                    self.stats.refreshed_urls += 1
                elif verdict == "refused":
                    refusals += 1
                    if refusals >= self.policy.max_refusals:
                        raise PartFailed(f"part {part.number}: S3 refused it {refusals} times, "
                                         f"last with {outcome.status} {outcome.code}")
            self.stats.retries += 1
            await deferLater(self._clock, backoff.next_delay(), lambda: None)

    def _judge(self, part: Part, response: PartResponse, url: str, expected: str) -> str:
        status, code = response.status, response.code
        self.log.info("part {number} to {url}: {status} {code}", number=part.number, url=redact(url),
                      status=status, code=code)
        if code == "NoSuchUpload":
            return "gone"
        if status == 403 or code in _URL_REFUSED:
            # Expired, or no longer valid: some servers say so with 400.
            return "url"
        if status == 200 or code in ("BadDigest", "InvalidDigest"):
            return "refused"
        if status in (408, 429) or status >= 500:
            return "retry"
        return "refused"

    async def _attempt(self, part: Part, md5: str, url: str,
                       open_body: Callable[[Part], PartBody]) -> PartResponse | Exception:
        """One PUT: S3's answer, or the exception that ended it."""
        self.stats.attempts += 1
        self.in_flight += 1
        body = open_body(part)
        started = self._clock.seconds()
        d = self._target.put(url, {"Content-MD5": md5}, body)
        stalled = [False]

        def watch() -> None:
            now = self._clock.seconds()
            if now - body.last_progress >= self.policy.stall_timeout or now - started >= self.policy.part_timeout:
                stalled[0] = True
                d.cancel()
            else:
                watchdog[0] = self._clock.callLater(1.0, watch)

        watchdog = [self._clock.callLater(1.0, watch)]
        try:
            return await d
        except Exception as e:
            if body.damage is not None:
                raise StagedCopyDamaged(f"part {part.number}: {body.damage}") from e
            if stalled[0]:
                self.stats.stalls += 1
                self.log.info("part {number}: no progress for {timeout}s; abandoning the attempt",
                              number=part.number, timeout=self.policy.stall_timeout)
                return e
            if _cancelled(e):
                # Cancelled by our caller (the part arrived another way, the
                # transfer stops): the agent reports it wrapped as a failed
                # request, which must not read as a network failure.
                raise CancelledError() from e
            self.log.debug("part {number}: {error}", number=part.number, error=type(e).__name__)
            return e
        finally:
            self.in_flight -= 1
            self.stats.bytes_sent += body.sent
            if watchdog[0].active():
                watchdog[0].cancel()
            body.stopProducing()


def _cancelled(error: BaseException) -> bool:
    """
    Whether C{error} is a cancellation, possibly wrapped by the HTTP client
    (C{ResponseNeverReceived}, C{RequestTransmissionFailed} ... carry the
    underlying failures in C{reasons}).
    """
    if isinstance(error, CancelledError):
        return True
    return any(reason.check(CancelledError) for reason in getattr(error, "reasons", ()) or ())
