"""
The edge's download component: the route every stored file is downloaded
by, the cache it serves from, the fetches that fill it, and the prefetch
that fills it before anyone asks (C{docs/downloads.md}).

C{GET} and C{HEAD /api/v1/files/<id>/content} (and C{/api/files/...}):
the caller must be able to see the file's project in the replica (else
404, as everywhere).  A cached file is answered from the cache at once; any
other is fetched (or joins the fetch under way) and its bytes are sent as
they arrive.  The rules of the headers are in L{relay.edge.downloads.http}.

Prefetch is level-triggered: whenever the replica's files change (and
every minute), the stored files are compared with the cache.  Cached
copies of files that are gone are dropped; job results, and other files up
to C{prefetch_max_size}, are fetched, two at a time, when they fit in the
cache without evicting anything.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from relay.config import relative_to
from relay.crypto import DecryptionError
from relay.db import Database
from relay.download_messages import CONTENT, register_types
from relay.edge.auth import Principal
from relay.edge.downloads import http
from relay.edge.downloads.cache import CACHED, FETCHING, Entry, FileCache, entries
from relay.edge.downloads.fetch import Fetch, Fetcher, FetchSettings, Unavailable, UrlClient
from relay.edge.events import Event, EventHub
from relay.edge.identity import Identity
from relay.edge.replica.pending import files_for
from relay.edge.uploads.spool import Spool, SpoolError, SpoolReader, SpoolWriter
from relay.edge.web.guard import answer, authenticated
from relay.edge.web.routes import api_route
from relay.link.bridge import ILinkEnd
from relay.link.envelope import Envelope
from relay.metrics import Metrics
from relay.threads import Threads

#: Bytes read from the cache and written to the client at a time.
BLOCK = 1 << 20
_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")

FILE_CACHE = "file.cache"
#: A cached file the replica has never listed is dropped after this long.
UNLISTED_GRACE = 3600.0


@implementer(IPushProducer)
class _Pacer:
    """The client's connection, as a producer: writes wait while it is full."""

    def __init__(self) -> None:
        self._paused: Deferred[None] | None = None
        self.stopped = False

    def writable(self) -> Deferred[None]:
        if self.stopped:
            raise CancelledError("the client went away")
        return self._paused if self._paused is not None else succeed(None)

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()


class Downloads(MultiService):
    """
    See the module docstring.

    @param prefetch_max_size: files uploaded elsewhere are prefetched up to
        this size (job results whatever their size).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        db: Database,
        cache: FileCache,
        fetcher: Fetcher,
        hub: EventHub | None,
        threads: Threads,
        *,
        prefetch_max_size: int,
        reconcile_interval: float = 60.0,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._db = db
        self.cache = cache
        self.fetcher = fetcher
        self._hub = hub
        self._blocking = fetcher.blocking
        self._prefetch_max = prefetch_max_size
        self._prefetching = DeferredSemaphore(2)
        self._queued: set[str] = set()
        self._reconcile_due: Any = None
        self._unwatch: Callable[[], None] | None = None
        self._taking: Deferred[None] | None = None
        self._take_again = False
        self.served = 0
        self.inline_results = 0
        # The spool I/O threads stop last, after everything using them.
        threads.setServiceParent(self)
        TimerService(reconcile_interval, self.reconcile).setServiceParent(self)

    # -- the service -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._hub is not None:
            self._unwatch = self._hub.watch(self._event)
        Deferred.fromCoroutine(self._resume())

    def stopService(self) -> Deferred[None]:
        if self._unwatch is not None:
            self._unwatch()
        if self._reconcile_due is not None and self._reconcile_due.active():
            self._reconcile_due.cancel()
        d = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        await self.fetcher.stop()
        await super().stopService()

    async def _resume(self) -> None:
        try:
            partial = await self.cache.recover()
        except Exception:
            self.log.failure("cache: could not recover")
            return
        for entry in partial:
            self.log.info("cache: resuming the fetch of file {file_id}", file_id=entry.file_id)
            self._queue(entry.file_id)
        self.take_inbound()

    # -- prefetch ----------------------------------------------------------------

    def _event(self, event: Event) -> None:
        if event.kind == "replica.changed" and "files" in event.data.get("tables", ()):
            if self._reconcile_due is None or not self._reconcile_due.active():
                self._reconcile_due = self._reactor.callLater(0.2, self.reconcile)

    def reconcile(self) -> Deferred[None]:
        """Compare the replica's stored files with the cache, now."""
        d = Deferred.fromCoroutine(self._reconcile())
        d.addErrback(lambda f: self.log.failure("cache: reconciling with the replica failed", f))
        return d

    async def _reconcile(self) -> None:
        files = await self._db.read(_stored_files)
        held = {e.file_id: e for e in await self._db.read(entries)}
        now = self._reactor.seconds()
        newly_listed = [f for f, e in held.items() if f in files and not e.listed]
        if newly_listed:
            await self.cache.listed(newly_listed)
        for file_id, entry in held.items():
            row = files.get(file_id)
            if row is not None and row["sha256"] == entry.sha256:
                continue
            # Not listed yet: an upload the replica will hear of soon; only
            # a very old one is given up.
            if row is None and not entry.listed and now - entry.created_at < UNLISTED_GRACE:
                continue
            if self.fetcher.fetching(file_id) is None:
                await self.cache.drop(file_id, "deleted from the registry")
                self._announce_state(file_id, "remote", 0, entry.size)
        for file_id, row in files.items():
            if (
                file_id in held
                or file_id in self._queued
                or self.fetcher.fetching(file_id) is not None
            ):
                continue
            if row["kind"] == "result" or int(row["size"]) <= self._prefetch_max:
                self._queue(file_id)

    def _queue(self, file_id: str) -> None:
        self._queued.add(file_id)
        d = self._prefetching.run(lambda: Deferred.fromCoroutine(self._prefetch(file_id)))
        d.addBoth(lambda _: self._queued.discard(file_id))

    async def _prefetch(self, file_id: str) -> None:
        entry = await self.cache.get(file_id)
        if entry is None:
            row = await self._db.read(_stored_file, file_id)
            if row is None or not await self.cache.fits_free(int(row["size"])):
                return
        elif entry.complete:
            return
        fetch = self.fetcher.fetch(file_id)
        try:
            await fetch.done
        except Unavailable:
            pass  # logged by the fetch; the next reconcile tries again

    def announce(self, fetch: Fetch) -> None:
        """A fetch moved on: tell the file's project."""
        state = CACHED if fetch.verified else FETCHING
        self._announce_state(fetch.file_id, state, fetch.written, fetch.size)

    def _announce_state(self, file_id: str, state: str, fetched: int, size: int) -> None:
        if self._hub is None:
            return
        hub = self._hub

        def publish(members: list[str]) -> None:
            for user_id in members:
                hub.publish(
                    user_id,
                    FILE_CACHE,
                    {"file_id": file_id, "state": state, "fetched": fetched, "size": size},
                )

        self._db.read(_members_of_file, file_id).addCallback(publish).addErrback(
            lambda f: self.log.failure("could not announce file {file_id}", f, file_id=file_id)
        )

    # -- the route -----------------------------------------------------------------

    def routes(self, app: Klein, identity: Identity) -> None:
        authed = authenticated(identity)

        @api_route(app, "/files/<file_id>/content", ["GET", "HEAD"])
        @authed
        async def content(request: IRequest, principal: Principal, file_id: str) -> bytes:
            return await self.serve(request, principal, file_id)

    async def serve(self, request: IRequest, principal: Principal, file_id: str) -> bytes:
        file = (
            None
            if not _FILE_ID.match(file_id)
            else await self._db.read(_visible, principal.user_id, file_id)
        )
        if file is None:
            return answer(request, 404, {"error": "no such file", "code": "not_found"})
        if file["state"] != "stored" or not file["sha256"]:
            return answer(
                request,
                409,
                {"error": "the file is not stored in the cloud yet", "code": "not_stored"},
            )
        size, etag, modified = (
            int(file["size"]),
            http.etag_of(file["sha256"]),
            float(file["created_at"]),
        )
        request.setHeader(b"etag", etag.encode())
        request.setHeader(b"last-modified", http.http_date(modified).encode())
        request.setHeader(b"accept-ranges", b"bytes")
        request.setHeader(b"cache-control", b"private, no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        headers = {name: _header(request, name) for name in _CONDITIONS}
        decided = http.decide(headers, size, etag, modified)
        if decided.status == 304:
            request.setResponseCode(304)
            return b""
        if decided.status == 412:
            return answer(
                request,
                412,
                {"error": "the file is not the version asked for", "code": "precondition"},
            )
        if decided.status == 416:
            request.setHeader(b"content-range", f"bytes */{size}".encode())
            return answer(
                request,
                416,
                {
                    "error": f"the range is outside the file's {size} bytes",
                    "code": "range_not_satisfiable",
                },
            )
        self.cache.pin(file_id)
        try:
            return await self._serve(request, file, decided)
        finally:
            self.cache.unpin(file_id)

    async def _serve(self, request: IRequest, file: Any, decided: http.Answer) -> bytes:
        file_id = file["id"]
        for _ in range(2):  # a corrupt cached copy is dropped and fetched again once
            entry = await self.cache.get(file_id)
            fetch = None
            if entry is None or not entry.complete or entry.sha256 != file["sha256"]:
                fetch = self.fetcher.fetch(file_id)
                try:
                    await fetch.ready
                except Unavailable as e:
                    return answer(request, e.status, {"error": e.reason, "code": e.code})
                stored_type, store_id = fetch.content_type, fetch.store_id
            else:
                stored_type, store_id = entry.content_type, entry.store_id
            reader = None
            if decided.end > decided.start and fetch is None:
                try:
                    reader = await self._blocking(
                        _open_checked, self.cache.store, store_id, decided.start
                    )
                except (SpoolError, DecryptionError) as e:
                    await self.cache.drop(file_id, f"the cached copy is damaged: {e}")
                    continue
            break
        else:
            return answer(
                request, 502, {"error": "the file could not be read", "code": "unavailable"}
            )
        request.setHeader(b"content-type", http.content_type(stored_type).encode())
        request.setHeader(b"content-disposition", http.disposition(file["name"]).encode())
        request.setHeader(b"content-security-policy", b"sandbox; default-src 'none'")
        request.setHeader(b"content-length", str(decided.end - decided.start).encode())
        if decided.status == 206:
            request.setHeader(
                b"content-range", f"bytes {decided.start}-{decided.end - 1}/{file['size']}".encode()
            )
        request.setResponseCode(decided.status)
        if request.method == b"HEAD" or decided.end == decided.start:
            if reader is not None:
                await self._blocking(reader.close)
            return b""
        await self._send(request, file_id, store_id, decided.start, decided.end, fetch, reader)
        if fetch is None:
            self.cache.touch(file_id).addErrback(lambda f: None)
        self.served += 1
        return b""

    async def _send(
        self,
        request: IRequest,
        file_id: str,
        store_id: str,
        start: int,
        end: int,
        fetch: Fetch | None,
        reader: SpoolReader | None,
    ) -> None:
        """
        Write C{[start, end)} to the client as the cache (or the fetch)
        has it; on any failure midway, cut the connection (the client
        sees a short answer and resumes; nothing wrong is ever sent).
        """
        pacer = _Pacer()
        request.registerProducer(pacer, True)  # type: ignore[attr-defined]
        position = start
        refetched = fetch is not None
        try:
            while position < end:
                if self.cache.dropped(store_id):
                    raise Unavailable("the file was dropped from the cache")
                available = end
                if fetch is not None and not fetch.verified:
                    if fetch.error is not None:
                        raise fetch.error
                    available = fetch.readable(end)
                    if available <= position:
                        await fetch.wait(position)
                        continue
                try:
                    if reader is None or reader.length < min(available, position + BLOCK):
                        if reader is not None:
                            await self._blocking(reader.close)
                            reader = None
                        reader = await self._open(store_id, fetch)
                    take = min(BLOCK, available - position, reader.length - position)
                    if take <= 0:
                        raise SpoolError(
                            f"the store shows {reader.length} bytes, {available} were written"
                        )
                    data = await self._blocking(reader.read, position, take)
                except (SpoolError, DecryptionError) as e:
                    # Damaged on disk: never sent; the rest comes from S3.
                    await self.cache.drop(file_id, f"the cached copy is damaged: {e}")
                    if refetched:
                        raise
                    refetched = True
                    if reader is not None:
                        await self._blocking(reader.close)
                        reader = None
                    fetch = self.fetcher.fetch(file_id)
                    await fetch.ready
                    store_id = fetch.store_id
                    continue
                await pacer.writable()
                request.write(data)
                position += take
        except CancelledError:
            raise
        except Exception as e:
            self.log.warn(
                "download of {file_id} cut at {position}: {error}",
                file_id=file_id,
                position=position,
                error=e,
            )
            request.loseConnection()  # type: ignore[attr-defined]
        finally:
            if reader is not None:
                await self._blocking(reader.close)
            if getattr(request, "channel", None) is not None:  # None once the client is gone
                request.unregisterProducer()  # type: ignore[attr-defined]

    def _open(self, store_id: str, fetch: Fetch | None) -> Deferred[SpoolReader]:
        if fetch is None or fetch.verified:
            return self._blocking(self.cache.store.reader, store_id)
        return fetch.lock.run(self._blocking, self.cache.store.reader, store_id)

    # -- small results, pushed by the cloud -------------------------------------

    def register(self, inbox: Any) -> None:
        inbox.register(CONTENT, self._received)

    def _received(self, conn: Any, message: Envelope) -> None:
        """
        A small result's bytes (the message's payload), on the database
        thread inside the inbox's transaction: kept in C{cache_inbound},
        written into the cache after it (no file I/O in here).
        """
        body, data = message.body, message.payload or b""
        if len(data) != body["size"]:
            self.log.warn(
                "file.content for {file_id}: {got} bytes, {size} announced; ignored",
                file_id=body["file_id"],
                got=len(data),
                size=body["size"],
            )
            return
        conn.execute(
            "INSERT INTO cache_inbound (file_id, size, sha256, content_type, data, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (file_id) DO NOTHING",
            (
                body["file_id"],
                body["size"],
                body["sha256"],
                body["content_type"],
                data,
                message.time,
            ),
        )
        self._reactor.callFromThread(self.take_inbound)

    def take_inbound(self) -> Deferred[None]:
        """Write what arrived in C{cache_inbound} into the cache."""
        if self._taking is None:
            self._taking = Deferred.fromCoroutine(self._take_inbound())
            self._taking.addErrback(
                lambda f: self.log.failure("cache: could not take small results", f)
            )
            self._taking.addBoth(self._took)
        else:
            self._take_again = True
        return self._taking

    def _took(self, _: object) -> None:
        self._taking = None
        if self._take_again:
            self._take_again = False
            self.take_inbound()

    async def _take_inbound(self) -> None:
        for row in await self._db.read(_inbound):
            file_id = row["file_id"]
            if await self.cache.get(file_id) is None and self.fetcher.fetching(file_id) is None:
                data = bytes(row["data"])
                if hashlib.sha256(data).hexdigest() == row["sha256"]:
                    await self._store_inline(file_id, data, row["sha256"], row["content_type"])
                else:
                    self.log.warn(
                        "cache: file.content for {file_id} does not hash right; ignored",
                        file_id=file_id,
                    )
            await self._db.run(_forget_inbound, file_id)

    async def _store_inline(
        self, file_id: str, data: bytes, sha256: str, content_type: str
    ) -> None:
        self.cache.pin(file_id)
        try:
            _, writer = await self.cache.begin(
                file_id, len(data), sha256, content_type, listed=False
            )
            try:
                await self._blocking(_write_whole, writer, data)
            except BaseException:
                await self._blocking(writer.close)
                await self.cache.drop(file_id, "could not write it")
                raise
            await self.cache.complete(file_id)
        finally:
            self.cache.unpin(file_id)
        self.inline_results += 1
        self._announce_state(file_id, CACHED, len(data), len(data))

    # -- what uploads hand over -----------------------------------------------------

    def keep_upload(
        self, spool: Spool, spool_id: str, file_id: str, size: int, sha256: str, content_type: str
    ) -> Deferred[bool]:
        """An upload the cloud registered: its spool file joins the cache."""
        return Deferred.fromCoroutine(
            self.cache.adopt(file_id, spool, spool_id, size, sha256, content_type)
        )


_CONDITIONS = (
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "range",
    "if-range",
)


def _header(request: IRequest, name: str) -> str | None:
    value = request.getHeader(name.encode())
    return None if value is None else value.decode("latin-1")


def _open_checked(store: Spool, store_id: str, offset: int) -> SpoolReader:
    """Open a cached file and prove (by its tag) the first segment served."""
    reader = store.reader(store_id)
    try:
        reader.read(offset, min(1, reader.length - offset))
    except BaseException:
        reader.close()
        raise
    return reader


def _inbound(conn: Any) -> list[Any]:
    return list(
        conn.execute(
            "SELECT file_id, sha256, content_type, data FROM cache_inbound ORDER BY received_at"
        )
    )


def _forget_inbound(conn: Any, file_id: str) -> None:
    conn.execute("DELETE FROM cache_inbound WHERE file_id = ?", (file_id,))


def _write_whole(writer: SpoolWriter, data: bytes) -> None:
    writer.write(data)
    writer.finalize()
    writer.close()


def _visible(conn: Any, user_id: str, file_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT project_id FROM replica_files WHERE id = ?", (file_id,)).fetchone()
    if row is None:
        return None
    return next((f for f in files_for(conn, user_id, row[0]) if f["id"] == file_id), None)


def _stored_file(conn: Any, file_id: str) -> Any:
    return conn.execute(
        "SELECT id, size, sha256, kind FROM replica_files WHERE id = ? AND state = 'stored' AND sha256 IS NOT NULL",
        (file_id,),
    ).fetchone()


def _stored_files(conn: Any) -> dict[str, Any]:
    return {
        row["id"]: row
        for row in conn.execute(
            "SELECT id, size, sha256, kind FROM replica_files WHERE state = 'stored' AND sha256 IS NOT NULL"
        )
    }


def _members_of_file(conn: Any, file_id: str) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT m.user_id FROM replica_members m JOIN replica_files f ON f.project_id = m.project_id "
            "WHERE f.id = ?",
            (file_id,),
        )
    ]


def cache_states(conn: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The file listing's rows, each with its C{cache} state at this edge."""
    held = {
        row["file_id"]: row
        for row in conn.execute("SELECT file_id, state, fetched, size FROM cache_files")
    }
    out = []
    for row in rows:
        entry = held.get(row["id"])
        if entry is None:
            cache: dict[str, Any] = {"state": "remote"}
        elif entry["state"] == CACHED:
            cache = {"state": CACHED}
        else:
            cache = {
                "state": FETCHING,
                "fetched": int(entry["fetched"]),
                "size": int(entry["size"]),
            }
        out.append({**row, "cache": cache})
    return out


def build_downloads(
    section: Any,
    reactor: Any,
    db: Database,
    bridge: ILinkEnd,
    hub: EventHub | None,
    data_dir: Path,
    spool: Spool,
    metrics: Metrics | None = None,
) -> Downloads:
    """
    The download component from the C{[downloads]} table, its cache beside
    the uploads' C{spool} (same format and key): its message types
    in the bridge's catalogue, the cloud's answers on its inbox.  Add its
    routes with L{Downloads.routes}.
    """
    register_types(bridge.catalogue)
    threads = Threads(reactor, "downloads", 8)
    blocking = threads.run

    # The spool's format and master key.
    store = spool.beside(relative_to(data_dir, section.cache_dir or Path("cache")))
    cache = FileCache(reactor, db, store, section.cache_size, blocking)
    urls = UrlClient(reactor, db, bridge.outbox, section.request_timeout)
    urls.register(bridge.inbox)
    settings = FetchSettings(
        streams=section.streams,
        chunk_size=section.chunk_size,
        stall_timeout=section.stall_timeout,
        request_timeout=section.request_timeout,
        give_up_after=section.give_up_after,
        bandwidth_limit=float(section.bandwidth_limit) or None,
    )
    downloads: Downloads
    fetcher = Fetcher(
        reactor, cache, urls, settings, blocking, lambda fetch: downloads.announce(fetch)
    )
    downloads = Downloads(
        reactor, db, cache, fetcher, hub, threads, prefetch_max_size=section.prefetch_max_size
    )
    downloads.register(bridge.inbox)
    if metrics is not None:
        metrics.gauge(
            "download_inline_results",
            "Small results that came over the link.",
            lambda: downloads.inline_results,
        )
        metrics.gauge(
            "download_served", "Downloads answered from this edge.", lambda: downloads.served
        )
        metrics.gauge("download_fetch_retries", "Ranged GETs tried again.", lambda: fetcher.retries)
        metrics.gauge(
            "download_bytes_fetched", "Bytes fetched from S3.", lambda: fetcher.bytes_received
        )
        metrics.gauge("download_evictions", "Cached files evicted.", lambda: cache.evictions)
    return downloads


__all__ = ["Downloads", "Entry", "build_downloads", "cache_states"]
