"""
Bringing a stored file from S3 into the edge's cache: a presigned GET URL
asked of the cloud over the link (the edge holds no AWS credentials), then
parallel ranged GETs over a pool of persistent connections.

The file is cut into chunks; up to C{streams} connections each fetch one
chunk at a time, never more than C{window} chunks ahead of what has been
written.  A connection that is reset, or moves no byte for
C{stall_timeout}, is dropped and its chunk resumed from the byte it got to
(a reset costs a reconnect, not the chunk).  A refused URL (expired,
signature) is replaced by a new one; C{404} means the object is gone and
the fetch fails.  Every stream takes its bytes through one L{Throttle}
(C{bandwidth_limit}), which leaves room for interactive traffic on a thin
link.

The bytes are written to the cache's store strictly in order, as they
arrive (the head chunk is written while it is still coming), hashed on the
way; readers of a file being fetched (L{Fetch.wait}) get each byte as soon
as it is written.  Only when the whole file is written and its sha256 and
size match the registry's is it marked C{cached}.  A fetch that fails for a
passing reason (the link, S3 unreachable) keeps what it wrote, still
C{fetching}, and the next fetch of the file resumes from there, also after
a restart; one whose file is gone or whose bytes do not hash right drops
it.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, succeed
from twisted.internet.error import ConnectionClosed, TimeoutError
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers

from relay.db import Database
from relay.download_messages import FAILED, REQUEST, URL
from relay.edge.downloads.cache import Entry, FileCache
from relay.edge.transfer.body import Throttle
from relay.edge.uploads.spool import Spool, SpoolWriter
from relay.link.envelope import TO_CLOUD, Envelope
from relay.link.outbox import IOutbox


@dataclass(frozen=True)
class FetchSettings:
    """
    How files are fetched (the C{[downloads]} table; sizes in bytes, times
    in seconds).
    """

    streams: int = 8
    chunk_size: int = 4 << 20
    stall_timeout: float = 30.0
    connect_timeout: float = 30.0
    #: The cloud's answer with a URL is awaited this long (then 504).
    request_timeout: float = 20.0
    retry_initial: float = 0.5
    retry_cap: float = 15.0
    #: A fetch that wrote no byte for this long fails (the client gets
    #: 504, or its stream ends); what it wrote is kept for the next one.
    give_up_after: float = 300.0
    bandwidth_limit: float | None = None

    @property
    def window(self) -> int:
        return 2 * self.streams


class Unavailable(Exception):
    """
    The file cannot be fetched now.  C{status} is the HTTP status a client
    is answered with (502: the cloud or S3 refused; 504: no answer in
    time), C{code} the API's error code.
    """

    def __init__(self, reason: str, status: int = 502, code: str = "unavailable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Source:
    """The cloud's answer: where the object is, and what it must be."""

    url: str
    expires_at: float
    size: int
    sha256: str
    content_type: str


class UrlClient:
    """
    Asks the cloud for presigned GET URLs (C{download.request}) and hands
    the answers to whoever waits for them.
    """

    log = Logger()

    def __init__(self, reactor: Any, db: Database, outbox: IOutbox, timeout: float) -> None:
        self._reactor = reactor
        self._db = db
        self._outbox = outbox
        self._timeout = timeout
        self._waiting: dict[str, Deferred[Source]] = {}
        self.asked = 0

    def register(self, inbox: Any) -> None:
        inbox.register(URL, self._answered)
        inbox.register(FAILED, self._answered)

    async def ask(self, file_id: str) -> Source:
        request_id = os.urandom(16).hex()
        answer: Deferred[Source] = Deferred()
        self._waiting[request_id] = answer
        timer = self._reactor.callLater(self._timeout, self._expired, request_id)
        try:
            await self._db.run(
                lambda conn: self._outbox.put(
                    conn, REQUEST, {"request_id": request_id, "file_id": file_id}, to=TO_CLOUD
                )
            )
            self._outbox.wake()
            self.asked += 1
            return await answer
        finally:
            self._waiting.pop(request_id, None)
            if timer.active():
                timer.cancel()

    def _expired(self, request_id: str) -> None:
        waiting = self._waiting.pop(request_id, None)
        if waiting is not None:
            waiting.errback(
                Unavailable("the cloud did not answer in time; try again", 504, "cloud_timeout")
            )

    # On the database thread, inside the inbox's transaction: nothing is
    # stored, the answer goes to the reactor thread.
    def _answered(self, conn: Any, message: Envelope) -> None:
        self._reactor.callFromThread(self._deliver, message.type, dict(message.body))

    def _deliver(self, type: str, body: dict[str, Any]) -> None:
        waiting = self._waiting.pop(body["request_id"], None)
        if waiting is None:
            return  # asked again meanwhile, or given up
        if type == FAILED:
            waiting.errback(
                Unavailable(
                    f"the cloud cannot supply the file: {body['reason']}", 502, body["code"]
                )
            )
        else:
            expires = self._reactor.seconds() + body["expires_in"] * 0.9
            waiting.callback(
                Source(body["url"], expires, body["size"], body["sha256"], body["content_type"])
            )


class _Chunk:
    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.data = bytearray()
        #: Written out by the writer (and C{data} released).
        self.consumed = False

    @property
    def got(self) -> int:
        return self.end if self.consumed else self.start + len(self.data)

    @property
    def complete(self) -> bool:
        return self.got >= self.end


_DONE = Failure(ResponseDone())


class _RetryableGet(Exception):
    """A GET that may be tried again (with backoff)."""


class _Body(Protocol):
    """
    Receives one ranged GET's body into its chunk; drops the connection
    when it stalls; paces reading through the throttle (a paused transport
    lets TCP slow the sender).
    """

    def __init__(self, fetch: Fetch, chunk: _Chunk, limit: int) -> None:
        self._fetch = fetch
        self._chunk = chunk
        self._limit = limit
        self.finished: Deferred[None] = Deferred()
        self._timer = fetch.clock.callLater(fetch.settings.stall_timeout, self._stalled)
        self.stalled = False

    def dataReceived(self, data: bytes) -> None:
        room = self._limit - len(self._chunk.data)
        if room <= 0:
            return
        self._chunk.data += data[:room]
        self._timer.reset(self._fetch.settings.stall_timeout)
        self._fetch._arrived(len(data[:room]))
        paced = self._fetch.throttle.take(len(data))
        if not paced.called:
            transport: Any = self.transport
            transport.pauseProducing()
            paced.addCallback(lambda _: transport.resumeProducing())

    def _stalled(self) -> None:
        self.stalled = True
        self.drop()

    def drop(self) -> None:
        transport: Any = self.transport
        if transport is not None:
            transport.stopProducing()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._timer.active():
            self._timer.cancel()
        if self.finished.called:
            return  # the fetch gave up on it
        if reason.check(ResponseDone) and not self.stalled:
            self.finished.callback(None)
        else:
            self.finished.errback(_RetryableGet("stalled" if self.stalled else str(reason.value)))


class _Discard(Protocol):
    def __init__(self) -> None:
        self.finished: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self.finished.callback(None)


class Fetch:
    """
    One file being brought into the cache (see the module docstring).

    C{written} bytes are in the store, readable; L{wait} fires when more
    are.  C{ready} fires once a client may be answered (the cloud supplied
    a URL and S3 answered), or fails with L{Unavailable}; C{done} fires
    when the file is cached, or fails.
    """

    log = Logger()

    def __init__(self, fetcher: Fetcher, file_id: str) -> None:
        self.fetcher = fetcher
        self.clock = fetcher.clock
        self.settings = fetcher.settings
        self.throttle = fetcher.throttle
        self.file_id = file_id
        self.size = 0
        self.sha256 = ""
        self.content_type = ""
        self.store_id = ""
        self.written = 0
        #: Every byte is written and hashed right: the file is cached.
        self.verified = False
        self.ready: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self.error: Unavailable | None = None
        self._waiters: list[Deferred[None]] = []
        self._source: Source | None = None
        self._refreshing: Deferred[Source] | None = None
        self._chunks: list[_Chunk] = []
        self._next = 0
        self._head = 0
        self._wake_writer: Deferred[None] | None = None
        self._wake_workers: list[Deferred[None]] = []
        self._bodies: set[_Body] = set()
        #: The store file's state record is rewritten in place on each
        #: flush: readers open it under this lock, never mid-write.
        self.lock = DeferredLock()
        self.received = 0

    # -- for readers -------------------------------------------------------------

    def readable(self, end: int) -> int:
        """
        Where readers may read up to now, of C{[.., end)}: what is written,
        except the file's last byte, which waits for the whole file's hash
        (so no client ever holds a complete copy that turned out wrong).
        """
        if self.verified:
            return end
        return min(end, self.written, self.size - 1)

    def wait(self, offset: int) -> Deferred[None]:
        """Fires when byte C{offset} is readable (or the fetch ended)."""
        if self.readable(offset + 1) > offset or self.error is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    # -- the run -------------------------------------------------------------------

    async def run(self) -> None:
        cache = self.fetcher.cache
        cache.pin(self.file_id)
        writer: SpoolWriter | None = None
        try:
            entry = await cache.get(self.file_id)
            self._source = source = await self.fetcher.urls.ask(self.file_id)
            self.size, self.sha256, self.content_type = (
                source.size,
                source.sha256,
                source.content_type,
            )
            digest = hashlib.sha256()
            if entry is not None and (entry.size != source.size or entry.sha256 != source.sha256):
                await cache.drop(self.file_id, "the registry holds other bytes for it now")
                entry = None
            if entry is None:
                entry, writer = await cache.begin(
                    self.file_id, source.size, source.sha256, source.content_type
                )
            else:
                writer = await self.fetcher.blocking(_reopen, cache.store, entry, digest)
            self.store_id = entry.store_id
            self.written = writer.offset
            if self.written > 0:
                self._ready()
            await self._fetch_all(writer, digest)
            await self.fetcher.blocking(writer.finalize)
            await self.fetcher.blocking(writer.close)
            writer = None
            if digest.hexdigest() != self.sha256:
                await cache.drop(self.file_id, "its bytes do not hash to the registry's sha256")
                raise Unavailable(
                    "the file's bytes from S3 do not match its sha256", 502, "corrupt"
                )
            await cache.complete(self.file_id)
            self.log.info(
                "cache: file {file_id} fetched ({size} bytes)", file_id=self.file_id, size=self.size
            )
        except BaseException as e:
            self._stop_bodies()
            if writer is not None:
                await self.fetcher.blocking(writer.close)
            error = e if isinstance(e, Unavailable) else Unavailable(f"the fetch failed: {e}", 502)
            if isinstance(e, Unavailable) and e.code in ("not_found", "not_stored", "gone"):
                await cache.drop(self.file_id, e.reason)
            self.error = error
            if not isinstance(e, (Unavailable, CancelledError)):
                self.log.failure(
                    "cache: fetching file {file_id} failed", Failure(e), file_id=self.file_id
                )
            else:
                self.log.warn(
                    "cache: fetching file {file_id} failed: {reason}",
                    file_id=self.file_id,
                    reason=error.reason,
                )
            self._ready(error)
            self._wake_readers()
            self.done.errback(error)
            return
        finally:
            cache.unpin(self.file_id)
        self.verified = True
        self._ready()
        self._wake_readers()
        self.done.callback(None)

    async def _fetch_all(self, writer: SpoolWriter, digest: Any) -> None:
        chunk = self.settings.chunk_size
        self._chunks = [
            _Chunk(start, min(start + chunk, self.size))
            for start in range(self.written, self.size, chunk)
        ]
        workers = [
            Deferred.fromCoroutine(self._worker())
            for _ in range(min(self.settings.streams, len(self._chunks)))
        ]
        writing = Deferred.fromCoroutine(self._writer(writer, digest))
        try:
            # The first failure (a worker's or the writer's) ends the fetch.
            first: Deferred[Any] = Deferred()
            for d in [*workers, writing]:
                d.addErrback(lambda f: None if first.called else first.errback(f))
            writing.addCallback(lambda _: None if first.called else first.callback(None))
            await first
        finally:
            self._stop_bodies()
            for d in [*workers, writing]:
                d.cancel()

    # The writer: strictly in order, as the bytes arrive.  Appended bytes
    # become C{written} (readable) when flushed: at least every 0.2 s, at
    # each chunk's end, and whenever no more bytes are waiting.
    async def _writer(self, writer: SpoolWriter, digest: Any) -> None:
        appended = self.written
        last_flush = last_progress = idle_since = self.clock.seconds()
        while appended < self.size:
            head = self._chunks[self._head]
            data = bytes(head.data[appended - head.start :])
            now = self.clock.seconds()
            if not data:
                if appended > self.written:
                    await self.lock.run(self.fetcher.blocking, writer.flush, False)
                    self._visible(appended)
                    continue
                if now - idle_since > self.settings.give_up_after:
                    raise Unavailable(
                        "no byte arrived from S3 for too long", 504, "storage_timeout"
                    )
                self._wake_writer = Deferred()
                timer = self.clock.callLater(1.0, self._nudge_writer)
                await self._wake_writer
                if timer.active():
                    timer.cancel()
                continue
            idle_since = now
            flush = now - last_flush >= 0.2 or appended + len(data) >= head.end
            await self.lock.run(self.fetcher.blocking, _append, writer, digest, data, flush)
            appended += len(data)
            if flush:
                last_flush = now
                self._visible(appended)
            if appended >= head.end:
                head.data = bytearray()
                head.consumed = True
                self._head += 1
                waiting, self._wake_workers = self._wake_workers, []
                for d in waiting:
                    d.callback(None)
            if now - last_progress >= 1.0 or appended >= self.size:
                last_progress = now
                await self.fetcher.cache.progress(self.file_id, self.written)
                self.fetcher.announce(self)

    def _visible(self, offset: int) -> None:
        self.written = offset
        self._wake_readers()

    def _nudge_writer(self) -> None:
        if self._wake_writer is not None and not self._wake_writer.called:
            self._wake_writer.callback(None)

    def _arrived(self, amount: int) -> None:
        self.received += amount
        self.fetcher.bytes_received += amount
        self._nudge_writer()

    def _wake_readers(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _ready(self, error: Unavailable | None = None) -> None:
        if self.ready.called:
            return
        if error is None:
            self.ready.callback(None)
        else:
            self.ready.errback(error)
            self.ready.addErrback(lambda _: None)  # whoever waits has its own callback

    # A worker: one chunk at a time, within the window.
    async def _worker(self) -> None:
        while self._next < len(self._chunks):
            if self._next >= self._head + self.settings.window:
                d: Deferred[None] = Deferred()
                self._wake_workers.append(d)
                await d
                continue
            chunk = self._chunks[self._next]
            self._next += 1
            await self._get(chunk)

    async def _get(self, chunk: _Chunk) -> None:
        failures = 0
        while not chunk.complete:
            got_before = chunk.got
            try:
                await self._attempt(chunk)
            except _RetryableGet as e:
                failures = 0 if chunk.got > got_before else failures + 1
                self.fetcher.retries += 1
                delay = min(
                    self.settings.retry_cap, self.settings.retry_initial * 2 ** min(failures, 10)
                )
                self.log.debug(
                    "cache: GET of {file_id} at {offset} failed ({why}); again in {delay:.1f} s",
                    file_id=self.file_id,
                    offset=chunk.got,
                    why=e,
                    delay=delay,
                )
                await _sleep(self.clock, delay * random.uniform(0.5, 1.0))

    async def _attempt(self, chunk: _Chunk) -> None:
        source = await self._url()
        headers = Headers({b"range": [f"bytes={chunk.got}-{chunk.end - 1}".encode()]})
        request = self.fetcher.agent.request(b"GET", source.url.encode(), headers)
        request.addTimeout(self.settings.stall_timeout, self.clock)
        try:
            response = await request
        except TimeoutError:
            raise _RetryableGet("no answer") from None
        except CancelledError:
            raise
        except Exception as e:
            raise _RetryableGet(f"{type(e).__name__}: {e}") from None
        code = response.code
        if code == 206 and not _starts_at(response, chunk.got):
            code = 0  # a range we did not ask for: try again
        whole = code == 200 and chunk.got == 0 and chunk.end == self.size
        if code != 206 and not whole:
            discard = _Discard()
            response.deliverBody(discard)
            if code in (401, 403):
                self._invalidate(source)
                raise _RetryableGet(f"the URL was refused ({code})")
            if code == 404:
                raise Unavailable("S3 no longer holds the file", 502, "gone")
            if code == 416 or 400 <= code < 500 and code not in (408, 429):
                raise Unavailable(f"S3 refused the download ({code})", 502, "storage_refused")
            raise _RetryableGet(f"S3 answered {code}")
        self._ready()
        body = _Body(self, chunk, chunk.end - chunk.start)
        self._bodies.add(body)
        response.deliverBody(body)
        try:
            await body.finished
        except (ResponseFailed, ConnectionClosed) as e:
            raise _RetryableGet(str(e)) from None
        finally:
            self._bodies.discard(body)
        if not chunk.complete:
            raise _RetryableGet("the answer ended early")

    async def _url(self) -> Source:
        """The URL to use: the one held, or (one request for all streams) a new one."""
        source = self._source
        if source is not None and source.expires_at > self.clock.seconds():
            return source
        if self._refreshing is None:
            self._refreshing = Deferred.fromCoroutine(self._refresh())
            self._refreshing.addErrback(lambda _: None)  # each waiter gets its own copy
        waiting: Deferred[Source] = Deferred()

        def relay(result: Any) -> Any:
            (waiting.errback if isinstance(result, Failure) else waiting.callback)(result)
            return result

        self._refreshing.addBoth(relay)
        return await waiting

    async def _refresh(self) -> Source:
        try:
            self._source = await self.fetcher.urls.ask(self.file_id)
            return self._source
        finally:
            self._refreshing = None

    def _invalidate(self, source: Source) -> None:
        if self._source is source:
            self._source = None

    def _stop_bodies(self) -> None:
        for body in list(self._bodies):
            body.drop()


class Fetcher:
    """
    The edge's fetches, one per file at a time: a second client of a file
    being fetched shares its fetch.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        cache: FileCache,
        urls: UrlClient,
        settings: FetchSettings,
        blocking: Callable[..., Deferred[Any]],
        announce: Callable[[Fetch], object] = lambda fetch: None,
    ) -> None:
        self.clock = reactor
        self.cache = cache
        self.urls = urls
        self.settings = settings
        self.blocking = blocking
        self.announce = announce
        self.throttle = Throttle(reactor, settings.bandwidth_limit)
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = settings.streams
        self._pool.retryAutomatically = False
        self.agent = Agent(reactor, connectTimeout=settings.connect_timeout, pool=self._pool)
        self._fetches: dict[str, Fetch] = {}
        self.retries = 0
        self.bytes_received = 0

    def fetching(self, file_id: str) -> Fetch | None:
        return self._fetches.get(file_id)

    def fetch(self, file_id: str) -> Fetch:
        """The file's fetch: the one under way, or a new one."""
        fetch = self._fetches.get(file_id)
        if fetch is None:
            fetch = self._fetches[file_id] = Fetch(self, file_id)
            fetch.done.addErrback(lambda _: None)
            d = Deferred.fromCoroutine(fetch.run())
            d.addBoth(lambda _: self._fetches.pop(file_id, None) and None)
        return fetch

    def stop(self) -> Deferred[Any]:
        for fetch in list(self._fetches.values()):
            fetch._stop_bodies()
        return self._pool.closeCachedConnections()


def _starts_at(response: Any, offset: int) -> bool:
    found = response.headers.getRawHeaders(b"content-range") or [b""]
    return found[0].decode("latin-1").strip().startswith(f"bytes {offset}-")


def _reopen(store: Spool, entry: Entry, digest: Any) -> SpoolWriter:
    """Resume a partial store file: hash what it holds, return a writer after it."""
    writer = store.open_writer(entry.store_id)
    try:
        with store.reader(entry.store_id) as reader:
            for block in reader.blocks(0, writer.offset):
                digest.update(block)
    except BaseException:
        writer.close()
        raise
    return writer


def _append(writer: SpoolWriter, digest: Any, data: bytes, flush: bool) -> None:
    writer.write(data)
    digest.update(data)
    if flush:
        writer.flush(fsync=False)


def _sleep(clock: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred(lambda d: timer.cancel())
    timer = clock.callLater(seconds, d.callback, None)
    return d
