"""
The presigned part URLs of one transfer, as the edge holds them: in memory
only (they are bearer tokens for one part each; a restarted edge asks
again), each with the local time it stops being usable.

A part that needs a URL waits on L{UrlBook.get}.  Misses are collected and
asked for in one C{transfer.presign}, filled up with the parts that will be
needed next, so that a transfer asks about once per hundred parts.  A URL is
not handed out within C{margin} of its expiry; one S3 refused (expired, or
its signature no longer valid) is dropped at once.  Requests whose answer
does not come are asked again after C{reask_after} seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime


def redact(url: str) -> str:
    """
    A presigned URL fit for a log: the query (signature, credential scope,
    upload id) is replaced by an ellipsis.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "…" if parts.query else "", ""))


@dataclass(frozen=True)
class _Url:
    url: str
    usable_until: float


class UrlBook:
    """
    @param ask: sends one C{transfer.presign} for these part numbers.
    @param upcoming: part numbers likely needed next, in order (to fill a
        request up to C{batch}).
    @param margin_cap: the most seconds before expiry a URL is retired; the
        margin is a quarter of the URL's lifetime up to this.
    """

    def __init__(
        self,
        clock: IReactorTime,
        ask: Callable[[list[int]], None],
        upcoming: Callable[[], Iterable[int]] = lambda: (),
        *,
        batch: int = 100,
        margin_cap: float = 60.0,
        reask_after: float = 30.0,
    ) -> None:
        self._clock = clock
        self._ask = ask
        self._upcoming = upcoming
        self._batch = batch
        self._margin_cap = margin_cap
        self._reask_after = reask_after
        self._urls: dict[int, _Url] = {}
        self._waiters: dict[int, list[Deferred[str]]] = {}
        self._asked: dict[int, float] = {}
        self._flush_call: IDelayedCall | None = None
        self._reask_call: IDelayedCall | None = None
        self.requests = 0

    def get(self, number: int) -> Deferred[str]:
        """
        A usable URL for part C{number}, now or once it has arrived.
        """
        found = self._urls.get(number)
        if found is not None and found.usable_until > self._clock.seconds():
            return succeed(found.url)
        self._urls.pop(number, None)
        d: Deferred[str] = Deferred(lambda d: self._cancelled(number, d))
        self._waiters.setdefault(number, []).append(d)
        self._schedule_flush()
        return d

    def add(self, urls: Mapping[int, str], expires_in: float) -> None:
        """
        URLs arrived (C{expires_in} seconds of life from now, at most).
        """
        margin = min(self._margin_cap, expires_in / 4)
        usable_until = self._clock.seconds() + expires_in - margin
        for number, url in urls.items():
            self._asked.pop(number, None)
            self._urls[number] = _Url(url, usable_until)
            for waiter in self._waiters.pop(number, []):
                waiter.callback(url)

    def invalidate(self, number: int, url: str) -> None:
        """
        S3 refused C{url}: never hand it out again.
        """
        found = self._urls.get(number)
        if found is not None and found.url == url:
            del self._urls[number]

    def has_usable(self, number: int) -> bool:
        found = self._urls.get(number)
        return found is not None and found.usable_until > self._clock.seconds()

    def close(self) -> None:
        """
        The transfer is over or starts again: drop everything; waiters fail.
        """
        for call in (self._flush_call, self._reask_call):
            if call is not None and call.active():
                call.cancel()
        self._urls.clear()
        self._asked.clear()
        waiters, self._waiters = self._waiters, {}
        for ds in waiters.values():
            for d in ds:
                d.cancel()

    # Internals

    def _cancelled(self, number: int, d: Deferred[str]) -> None:
        waiting = self._waiters.get(number, [])
        if d in waiting:
            waiting.remove(d)
        if not waiting:
            self._waiters.pop(number, None)

    def _schedule_flush(self) -> None:
        if self._flush_call is None or not self._flush_call.active():
            # Collect the misses of this reactor turn into one request.
            self._flush_call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        now = self._clock.seconds()
        fresh = lambda n: now - self._asked.get(n, -1e18) < self._reask_after  # noqa: E731
        wanted = [n for n in sorted(self._waiters) if not fresh(n)]
        if not wanted:
            self._schedule_reask()
            return
        chosen = set(wanted)
        for number in self._upcoming():
            if len(chosen) >= self._batch:
                break
            if number not in chosen and not self.has_usable(number) and not fresh(number):
                chosen.add(number)
        numbers = sorted(chosen)
        for start in range(0, len(numbers), self._batch):
            batch = numbers[start:start + self._batch]
            for number in batch:
                self._asked[number] = now
            self.requests += 1
            self._ask(batch)
        self._schedule_reask()

    def _schedule_reask(self) -> None:
        if not self._waiters or (self._reask_call is not None and self._reask_call.active()):
            return
        self._reask_call = self._clock.callLater(self._reask_after, self._reask)

    def _reask(self) -> None:
        self._reask_call = None
        if self._waiters:
            self._flush()
