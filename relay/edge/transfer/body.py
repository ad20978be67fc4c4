"""
A part's request body, streamed from the encrypted spool: L{PartBody}
reads one segment at a time (decrypted on a thread), writes it to the
connection, and waits whenever the connection pushes back, so a part is
never whole in memory.  An optional L{Throttle}, shared by every part,
caps the transfer stage's bandwidth so that it leaves room for
interactive traffic.

A spool copy that fails authentication, ends early or is gone cannot be
sent, however often it is tried: the body records why (L{PartBody.damage})
and the uploader gives the part up (L{StagedCopyDamaged}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from relay.edge.uploads.spool import SpoolCorrupt, SpoolFileGone

#: How much is written at once (a pause costs at most this, and a slow
#: connection shows progress at least this often).
THROTTLED_SLICE = 64 * 1024


class StagedCopyDamaged(Exception):
    """The spool copy of an upload cannot be read back as it was staged."""


class Throttle:
    """
    Paces bytes to C{rate} per second over everyone who asks, in debt form:
    a write goes as soon as the writes granted before it are paid for, and
    an idle spell earns up to C{burst} seconds of credit.  C{rate=None}: no
    limit.
    """

    def __init__(self, clock: IReactorTime, rate: float | None, burst: float = 0.25) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("a bandwidth limit must be positive")
        self._clock = clock
        self.rate = rate
        self._burst = burst
        self._virtual = clock.seconds() - burst

    def take(self, amount: int) -> Deferred[None]:
        """
        Fires when C{amount} bytes may be written.
        """
        if self.rate is None:
            return succeed(None)
        now = self._clock.seconds()
        # Debt form: a write may go once what was granted before it has
        # been paid for at the rate (an idle spell earns a burst of credit).
        start = max(self._virtual, now - self._burst)
        self._virtual = start + amount / self.rate
        delay = start - now
        if delay <= 0:
            return succeed(None)
        return deferLater(self._clock, delay, lambda: None)


@implementer(IBodyProducer, IPushProducer)
class PartBody:
    """
    The bytes of one part, for one PUT attempt.

    @param read_next: the next decrypted block of the part (at most one
        spool segment), from a thread; C{b""} past its end.
    @param close: releases the spool reader (called once, at the end).
    @ivar last_progress: when bytes were last accepted by the connection
        (the uploader's stall detector reads it).
    @ivar sent: bytes written so far.
    @ivar damage: why the spool copy could not be read, if it could not
        (what retrying will not change).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        length: int,
        read_next: Callable[[], Deferred[bytes]],
        close: Callable[[], Any],
        throttle: Throttle | None = None,
    ) -> None:
        self.length = length
        self._clock = clock
        self._read_next = read_next
        self._close = close
        self._throttle = throttle if throttle is not None and throttle.rate is not None else None
        self._consumer: IConsumer | None = None
        self._finished: Deferred[None] | None = None
        self._paused = False
        self._resumed: Deferred[None] | None = None
        self._stopped = False
        self._closed = False
        self._reading = False
        self.sent = 0
        self.damage: Exception | None = None
        self.last_progress = clock.seconds()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self._consumer = consumer
        self._finished = Deferred()
        self.last_progress = self._clock.seconds()
        Deferred.fromCoroutine(self._pump())
        return self._finished

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self.last_progress = self._clock.seconds()
        waiting, self._resumed = self._resumed, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        # IBodyProducer: after this the Deferred from startProducing must
        # never fire.
        self._stopped = True
        self.resumeProducing()
        if not self._reading:
            # Otherwise the read in progress releases the reader when it
            # returns: its thread is still using it.
            self._release()

    async def _pump(self) -> None:
        assert self._consumer is not None and self._finished is not None
        try:
            while self.sent < self.length and not self._stopped:
                self._reading = True
                try:
                    block = await self._read_next()
                except (SpoolCorrupt, SpoolFileGone) as e:
                    self.damage = e
                    raise
                finally:
                    self._reading = False
                if self._stopped:
                    self._release()
                    return
                if not block:
                    self.damage = EOFError(f"the spool ended {self.length - self.sent} bytes early")
                    raise self.damage
                if self.sent + len(block) > self.length:
                    block = block[: self.length - self.sent]
                await self._write(block)
            if not self._stopped:
                self._release()
                self._finished.callback(None)
        except Exception:
            self._release()
            if not self._stopped:
                self._finished.errback()

    async def _write(self, block: bytes) -> None:
        assert self._consumer is not None
        # In slices: a connection that drains slowly (many streams on a
        # thin link) still shows progress before the stall timeout.
        size = THROTTLED_SLICE
        for start in range(0, len(block), size):
            piece = block[start:start + size] if size < len(block) else block
            if self._throttle is not None:
                await self._throttle.take(len(piece))
            while self._paused and not self._stopped:
                self._resumed = Deferred()
                await self._resumed
            if self._stopped:
                return
            self._consumer.write(piece)
            self.sent += len(piece)
            self.last_progress = self._clock.seconds()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._close()
            except Exception:
                self.log.failure("closing a part's spool reader")
