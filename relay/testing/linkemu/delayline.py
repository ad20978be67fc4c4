"""
One direction of one emulated connection: a timestamped queue between the
transport the bytes are read from and the transport they are written to.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from .bucket import SharedBucket, TokenBucket
from .profile import LinkProfile


class _Chunk:
    """Bytes (or the end of the stream) due for delivery at C{due}."""

    __slots__ = ("due", "data", "offset", "eof", "full_close")

    def __init__(self, due: float, data: bytes, eof: bool = False) -> None:
        self.due = due
        self.data = data
        self.offset = 0
        self.eof = eof
        self.full_close = False

    def take(self, limit: int | None) -> bytes:
        """Up to C{limit} of the bytes not yet taken (all of them for C{None})."""
        remaining = len(self.data) - self.offset
        if limit is None or limit >= remaining:
            data = self.data if self.offset == 0 else self.data[self.offset :]
            self.offset = len(self.data)
            return data
        data = self.data[self.offset : self.offset + limit]
        self.offset += limit
        return data

    @property
    def exhausted(self) -> bool:
        return self.offset >= len(self.data)


def _ignore(amount: int) -> None:
    pass


@implementer(IPushProducer)
class DelayLine:
    """
    One direction of an emulated connection. Bytes handed to L{receive} wait
    out the one-way latency (plus jitter) in a timestamped queue, then go to
    the sink transport in order, paced by a per-connection L{TokenBucket} and
    a L{SharedBucket} for the whole link. The end of the stream travels the same
    way, so a FIN never overtakes data.

    Flow control: the line is the sink's streaming producer, so it stops
    writing while the sink's buffer is full; it pauses its source transport
    while it holds C{profile.buffer_bytes} or more, and while stalled. The
    queue therefore never holds more than C{buffer_bytes} plus one read.
    """

    def __init__(
        self,
        clock: IReactorTime,
        profile: LinkProfile,
        rng: random.Random,
        shared: SharedBucket,
        delivered: Callable[[int], None] = _ignore,
        queued: Callable[[int], None] = _ignore,
    ) -> None:
        self._clock = clock
        self._profile = profile
        self._rng = rng
        self._own = TokenBucket(clock, profile.rate_bytes_per_s)
        self._shared = shared
        # One bound method, so that the shared bucket can recognise us.
        self._wake = self._pump
        self._delivered = delivered
        self._queued_hook = queued
        self._queue: deque[_Chunk] = deque()
        self._queued = 0
        self._last_due = float("-inf")
        self._timer: IDelayedCall | None = None
        self._source: Any = None
        self._source_paused = False
        self._source_ended = False
        self._sink: Any = None
        self._registered = False
        self._sink_paused = False
        self._eof_queued = False
        self._eof_delivered = False
        self._stalled = False
        self._discarding = False
        self._pumping = False
        self._repump = False
        #: The most bytes this line has held at once.
        self.peak_bytes = 0

    @property
    def queued_bytes(self) -> int:
        """Bytes received and not yet delivered."""
        return self._queued

    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def source_paused(self) -> bool:
        """Whether this line is holding its source transport's reading."""
        return self._source_paused

    # Wiring

    def attach_source(self, source: IPushProducer) -> None:
        """Read from C{source}: the line pauses and resumes it."""
        if self._discarding:
            return
        self._source = source
        self._update_source()

    def attach_sink(self, sink: Any) -> None:
        """Write to C{sink} (a transport), as its streaming producer."""
        if self._discarding:
            return
        self._sink = sink
        sink.registerProducer(self, True)
        self._registered = True
        self._pump()

    # Events from the source

    def receive(self, data: bytes) -> None:
        """Queue bytes read from the source."""
        if self._discarding or self._eof_queued or not data:
            return
        self._queue.append(_Chunk(self._due_time(), data))
        self._queued += len(data)
        if self._queued > self.peak_bytes:
            self.peak_bytes = self._queued
            self._queued_hook(self._queued)
        if self._timer is None:
            self._pump()
        else:
            self._update_source()

    def source_ended(self) -> None:
        """The source sent FIN: pass it on, after the data, as a half-close."""
        self._source_ended = True
        self._source_paused = False
        self.finish(full_close=False)

    def source_lost(self) -> None:
        """The source connection closed cleanly: deliver the rest, then close the sink."""
        self._source = None
        self._source_paused = False
        self.finish(full_close=True)

    def finish(self, full_close: bool) -> None:
        """
        End the stream after the queued data: half-close the sink (FIN) or,
        with C{full_close}, close it entirely.
        """
        if self._discarding:
            return
        if self._eof_delivered:
            if full_close and self._sink is not None:
                self._sink.loseConnection()
            return
        if self._eof_queued:
            self._queue[-1].full_close |= full_close
            return
        chunk = _Chunk(self._due_time(), b"", eof=True)
        chunk.full_close = full_close
        self._queue.append(chunk)
        self._eof_queued = True
        if self._timer is None:
            self._pump()

    def discard(self) -> None:
        """Drop everything and stop: the sink is gone or the connection reset."""
        self._discarding = True
        self._cancel_timer()
        self._shared.withdraw(self._wake)
        self._queue.clear()
        self._queued = 0
        self._unregister()
        self._sink = None
        self._source = None

    # Control

    def set_stalled(self, stalled: bool) -> None:
        """Hold (or release) all traffic, without closing anything."""
        self._stalled = stalled
        if stalled:
            self._cancel_timer()
            self._shared.withdraw(self._wake)
            self._update_source()
        else:
            self._pump()

    def apply_profile(self, profile: LinkProfile) -> None:
        """Use a new profile; bytes already queued keep their due times."""
        self._profile = profile
        self._own.set_rate(profile.rate_bytes_per_s)
        self._pump()

    # IPushProducer, called by the sink transport

    def pauseProducing(self) -> None:
        self._sink_paused = True

    def resumeProducing(self) -> None:
        self._sink_paused = False
        self._pump()

    def stopProducing(self) -> None:
        # The sink's connection is gone; the connection object hears of it
        # through connectionLost and calls discard().
        self._sink_paused = True

    # Internals

    def _due_time(self) -> float:
        due = self._clock.seconds() + self._profile.latency_s
        if self._profile.jitter_s > 0:
            due += self._rng.uniform(0.0, self._profile.jitter_s)
        # Jitter must not reorder bytes: nothing leaves before its elders.
        due = max(due, self._last_due)
        self._last_due = due
        return due

    def _pump(self) -> None:
        # Writing or pausing a transport may call back into this line (a
        # producer notification, data released by resumeProducing); such
        # calls ask for another round instead of nesting.
        if self._pumping:
            self._repump = True
            return
        self._pumping = True
        try:
            self._repump = True
            while self._repump:
                self._repump = False
                self._deliver()
                self._update_source()
        finally:
            self._pumping = False

    def _deliver(self) -> None:
        self._cancel_timer()
        if (
            self._stalled
            or self._sink is None
            or self._sink_paused
            or self._discarding
            or self._eof_delivered
        ):
            return
        limits = [s for s in (self._own.slice_bytes, self._shared.slice_bytes) if s is not None]
        limit = min(limits) if limits else None
        now = self._clock.seconds()
        while self._queue:
            chunk = self._queue[0]
            if chunk.due > now:
                self._schedule(chunk.due - now)
                return
            if chunk.eof:
                self._queue.popleft()
                self._eof_delivered = True
                self._close_sink(chunk.full_close)
                return
            wait = self._own.wait_time()
            if wait > 0:
                self._schedule(wait)
                return
            if not self._shared.request(self._wake):
                return  # queued for a turn; the shared bucket calls back
            data = chunk.take(limit)
            if chunk.exhausted:
                self._queue.popleft()
            size = len(data)
            self._queued -= size
            self._own.consume(size)
            self._shared.consume(size)
            self._delivered(size)
            self._sink.write(data)
            if self._sink is None or self._sink_paused or self._stalled or self._discarding:
                return

    def _update_source(self) -> None:
        if self._source is None or self._source_ended:
            return
        hold = self._stalled or self._queued >= self._profile.buffer_bytes
        if hold and not self._source_paused:
            self._source_paused = True
            self._source.pauseProducing()
        elif not hold and self._source_paused:
            self._source_paused = False
            self._source.resumeProducing()

    def _close_sink(self, full_close: bool) -> None:
        sink = self._sink
        # A transport with a registered producer may wait for it before
        # closing; let go first.
        self._unregister()
        half_close = getattr(sink, "loseWriteConnection", None)
        if full_close or half_close is None:
            sink.loseConnection()
        else:
            half_close()

    def _unregister(self) -> None:
        if self._registered and self._sink is not None:
            self._registered = False
            self._sink.unregisterProducer()

    def _schedule(self, delay: float) -> None:
        self._timer = self._clock.callLater(max(0.0, delay), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
