"""
One client connection through the emulated link, joined to its upstream
connection by two L{DelayLine}s, with the faults the link injects into it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IProtocol, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .delayline import DelayLine
from .profile import LinkProfile
from .shared import EmulatedLink

log = Logger()

CLIENT = "client"
UPSTREAM = "upstream"


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """Hands one transport's events to its L{EmulatedConnection}."""

    def __init__(self, connection: EmulatedConnection, side: str) -> None:
        self._connection = connection
        self._side = side

    def connectionMade(self) -> None:
        assert self.transport is not None
        self._connection._side_made(self._side, self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._connection._side_data(self._side, data)

    _read_closed = False
    _write_closed = False

    def readConnectionLost(self) -> None:
        self._read_closed = True
        self._connection._side_eof(self._side)
        self._close_if_both()

    def writeConnectionLost(self) -> None:
        self._write_closed = True
        self._close_if_both()

    def _close_if_both(self) -> None:
        # A half-closeable protocol whose both halves closed gets no
        # connectionLost by itself: without this, a connection both of
        # whose peers sent FIN (a client that died between requests, a
        # server that closes on EOF) stayed open for ever.
        if self._read_closed and self._write_closed and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self._connection._side_lost(self._side, reason)


class _UpstreamFactory(Factory):
    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class EmulatedConnection:
    """
    A client connection accepted by a L{LinkEmulator} and the upstream
    connection made for it. C{to_upstream} and C{to_client} are the two
    directions (L{DelayLine}s). Tests may reset or stall one connection.
    """

    def __init__(self, emulator: EmulatedLink, number: int, peer: str) -> None:
        self.number = number
        self.peer = peer
        self._emulator = emulator
        self._clock = emulator.clock
        self._rng = emulator.rng
        counters = emulator.counters

        def to_upstream(amount: int) -> None:
            counters.bytes_to_upstream += amount

        def to_client(amount: int) -> None:
            counters.bytes_to_client += amount

        profile = emulator.profile
        self.to_upstream = DelayLine(
            self._clock, profile, self._rng, emulator.shared_to_upstream,
            delivered=to_upstream, queued=emulator.note_queued,
        )
        self.to_client = DelayLine(
            self._clock, profile, self._rng, emulator.shared_to_client,
            delivered=to_client, queued=emulator.note_queued,
        )
        self._transports: dict[str, ITransport] = {}
        self._lost: set[str] = set()
        self._connecting: Deferred[IProtocol] | None = None
        self._aborting = False
        self._done = False
        self._own_stall = False
        self._stall_end: IDelayedCall | None = None
        self._reset_timer: IDelayedCall | None = None
        self._stall_timer: IDelayedCall | None = None
        self._closed_waiters: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<EmulatedConnection {self.number} from {self.peer}>"

    @property
    def stalled(self) -> bool:
        """Whether traffic is held, by this connection's stall or the link's."""
        return self._own_stall or self._emulator.link_stalled

    @property
    def buffered_bytes(self) -> int:
        """Bytes inside the emulator for this connection, both directions."""
        return self.to_upstream.queued_bytes + self.to_client.queued_bytes

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires once both sides of this connection are gone."""
        d: Deferred[None] = Deferred()
        if self._done:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    # Faults

    def reset(self) -> bool:
        """Abort both sides (peers see ECONNRESET). False if already closing."""
        return self._abort(counted=True)

    def stall(self, duration_s: float | None = None) -> None:
        """Hold all traffic silently, for C{duration_s} or until L{resume}."""
        if self._aborting or self._done:
            return
        self._emulator.counters.stalls_injected += 1
        log.info(
            "linkemu connection {number} stalled {how}",
            number=self.number,
            how="until resumed" if duration_s is None else f"for {duration_s:.3g} s",
        )
        self._own_stall = True
        self._cancel(self._stall_timer)
        self._stall_timer = None
        self._cancel(self._stall_end)
        self._stall_end = None
        if duration_s is not None:
            self._stall_end = self._clock.callLater(duration_s, self._stall_over)
        self.apply_stall()

    def resume(self) -> None:
        """End this connection's stall (a link-wide stall still holds it)."""
        self._cancel(self._stall_end)
        self._stall_end = None
        if self._own_stall:
            self._own_stall = False
            log.info("linkemu connection {number} resumed", number=self.number)
            self._schedule_stall()
        self.apply_stall()

    def apply_stall(self) -> None:
        """Bring both directions in line with the stall state."""
        stalled = self.stalled
        self.to_upstream.set_stalled(stalled)
        self.to_client.set_stalled(stalled)

    def apply_profile(self, old: LinkProfile, new: LinkProfile) -> None:
        """Switch to a new profile; fault timers are redrawn if their mean changed."""
        self.to_upstream.apply_profile(new)
        self.to_client.apply_profile(new)
        if old.reset_mean_s != new.reset_mean_s:
            self._cancel(self._reset_timer)
            self._reset_timer = None
            self._schedule_reset()
        if old.stall_mean_s != new.stall_mean_s:
            self._cancel(self._stall_timer)
            self._stall_timer = None
            self._schedule_stall()

    # Events from the two sides

    def _side_made(self, side: str, transport: ITransport) -> None:
        if self._aborting:
            transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._transports[side] = transport
        if side == CLIENT:
            self.to_upstream.attach_source(transport)  # type: ignore[arg-type]
            self.to_client.attach_sink(transport)
            self.apply_stall()
            self._schedule_reset()
            self._schedule_stall()
            endpoint = self._emulator.upstream_endpoint
            d = endpoint.connect(_UpstreamFactory(_Side(self, UPSTREAM)))
            self._connecting = d
            d.addCallbacks(self._upstream_connected, self._upstream_failed)
        else:
            self.to_client.attach_source(transport)  # type: ignore[arg-type]
            self.to_upstream.attach_sink(transport)
            log.debug("linkemu connection {number} upstream connected", number=self.number)

    def _side_data(self, side: str, data: bytes) -> None:
        self._line_from(side).receive(data)

    def _side_eof(self, side: str) -> None:
        self._line_from(side).source_ended()

    def _side_lost(self, side: str, reason: Failure) -> None:
        self._lost.add(side)
        self._line_to(side).discard()
        if self._aborting:
            self._line_from(side).discard()
        elif reason.check(ConnectionDone):
            # Deliver what is in flight, then close the other side.
            self._line_from(side).source_lost()
        else:
            # The peer reset (or the socket failed): pass the reset on.
            log.info(
                "linkemu connection {number}: {side} lost ({why}), resetting the other side",
                number=self.number,
                side=side,
                why=reason.getErrorMessage(),
            )
            self._abort(counted=False)
        self._maybe_done()

    def _upstream_connected(self, protocol: Protocol) -> None:
        self._connecting = None

    def _upstream_failed(self, failure: Failure) -> None:
        self._connecting = None
        self._lost.add(UPSTREAM)
        if not self._aborting:
            self._emulator.counters.connect_failures += 1
            log.warn(
                "linkemu connection {number}: upstream connection failed: {why}",
                number=self.number,
                why=failure.getErrorMessage(),
            )
            self._abort(counted=False)
        self._maybe_done()

    # Internals

    def _abort(self, counted: bool) -> bool:
        if self._aborting or self._done:
            return False
        self._aborting = True
        if counted:
            self._emulator.counters.resets_injected += 1
            log.info("linkemu connection {number} reset", number=self.number)
        self._cancel_faults()
        self.to_upstream.discard()
        self.to_client.discard()
        if self._connecting is not None:
            self._connecting.cancel()
        for side, transport in list(self._transports.items()):
            if side not in self._lost:
                transport.abortConnection()  # type: ignore[attr-defined]
        self._maybe_done()
        return True

    def _maybe_done(self) -> None:
        if self._done or CLIENT not in self._lost:
            return
        upstream_gone = UPSTREAM in self._lost or (
            UPSTREAM not in self._transports and self._connecting is None
        )
        if not upstream_gone:
            return
        self._done = True
        self._cancel_faults()
        self.to_upstream.discard()
        self.to_client.discard()
        self._emulator.forget(self)
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            d.callback(None)

    def _line_from(self, side: str) -> DelayLine:
        return self.to_upstream if side == CLIENT else self.to_client

    def _line_to(self, side: str) -> DelayLine:
        return self.to_client if side == CLIENT else self.to_upstream

    def _schedule_reset(self) -> None:
        mean = self._emulator.profile.reset_mean_s
        if mean is None or self._aborting or self._done or self._reset_timer is not None:
            return
        delay = self._rng.expovariate(1.0 / mean)
        self._reset_timer = self._clock.callLater(delay, self._random_reset)

    def _random_reset(self) -> None:
        self._reset_timer = None
        self.reset()

    def _schedule_stall(self) -> None:
        mean = self._emulator.profile.stall_mean_s
        if self._aborting or self._done or self._own_stall or self._stall_timer is not None:
            return
        if mean is None:
            return
        delay = self._rng.expovariate(1.0 / mean)
        self._stall_timer = self._clock.callLater(delay, self._random_stall)

    def _random_stall(self) -> None:
        self._stall_timer = None
        self.stall(self._emulator.profile.stall_duration_s)

    def _stall_over(self) -> None:
        self._stall_end = None
        self.resume()

    def _cancel_faults(self) -> None:
        for call in (self._reset_timer, self._stall_timer, self._stall_end):
            self._cancel(call)
        self._reset_timer = self._stall_timer = self._stall_end = None

    @staticmethod
    def _cancel(call: IDelayedCall | None) -> None:
        if call is not None and call.active():
            call.cancel()
