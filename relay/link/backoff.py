"""Reconnect delays: bounded exponential backoff with jitter.

The attempt counter lives here, not in ClientService, because ClientService
forgets its count whenever a TCP connection succeeds: a broker that accepts
TCP and then fails the AMQP handshake would be retried at the initial delay
forever. The counter is reset only once a connection has stayed healthy for
C{healthy_after} seconds.
"""

from __future__ import annotations

import random
from typing import Literal

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

Jitter = Literal["full", "decorrelated", "none"]


class Backoff:
    """Delays between connection attempts, with an injected clock.

    C{jitter="full"}: uniform in C{[0, min(cap, initial * factor**n)]} for the
    n-th consecutive failure (n from 0). C{"decorrelated"}: uniform in
    C{[initial, previous * factor]}, at most C{cap}. C{"none"}: the ceiling
    itself. Every delay lies in C{[0, cap]}.

    Call L{next_delay} once per attempt to wait for (it counts it),
    L{connected} when a connection is fully usable, and
    L{disconnected} when it goes away.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        initial: float = 1.0,
        factor: float = 2.0,
        cap: float = 60.0,
        healthy_after: float = 30.0,
        jitter: Jitter = "full",
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= cap:
            raise ValueError(f"need 0 < initial <= cap, got initial={initial} cap={cap}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        if jitter not in ("full", "decorrelated", "none"):
            raise ValueError(f"unknown jitter {jitter!r}")
        self._clock = clock
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self.healthy_after = healthy_after
        self.jitter: Jitter = jitter
        self._rng = rng if rng is not None else random.Random()
        self._pending_reset: IDelayedCall | None = None
        self.attempts = 0
        self._ceiling = initial
        self._previous = initial

    def next_delay(self) -> float:
        """Count one more failed attempt and return how long to wait before the next."""
        self.attempts += 1
        if self.jitter == "decorrelated":
            # Grows from the previous delay, so it never needs factor**n.
            upper = max(self.initial, self._previous * self.factor)
            delay = min(self.cap, self._rng.uniform(self.initial, upper))
            self._previous = delay
            return delay
        ceiling = self._ceiling
        # Grow the ceiling step by step: no overflow, however many attempts.
        self._ceiling = min(self.cap, self._ceiling * self.factor)
        if self.jitter == "full":
            return self._rng.uniform(0.0, ceiling)
        return ceiling

    def connected(self) -> None:
        """A connection is up: forget past failures if it lasts C{healthy_after} seconds."""
        self._cancel_pending_reset()
        self._pending_reset = self._clock.callLater(self.healthy_after, self._healthy)

    def proven(self) -> None:
        """The connection did real work (the broker confirmed or delivered a
        message): start over from the initial delay now.

        On a link that resets every few seconds a connection never lasts
        C{healthy_after}, and delays would grow to the cap although every
        connection works; a connection that carried messages is evidence
        enough.  Handshakes that fail still back off.
        """
        if self.attempts:
            self.log.debug("link proved itself; backoff reset after {attempts} attempts", attempts=self.attempts)
        self.reset()

    def disconnected(self) -> None:
        """The connection went away: failures keep counting from where they were."""
        self._cancel_pending_reset()

    def reset(self) -> None:
        """Start over from the initial delay."""
        self._cancel_pending_reset()
        self.attempts = 0
        self._ceiling = self.initial
        self._previous = self.initial

    def _healthy(self) -> None:
        self._pending_reset = None
        if self.attempts:
            self.log.info(
                "link healthy for {seconds}s; backoff reset after {attempts} attempts",
                seconds=self.healthy_after,
                attempts=self.attempts,
            )
        self.reset()

    def _cancel_pending_reset(self) -> None:
        if self._pending_reset is not None and self._pending_reset.active():
            self._pending_reset.cancel()
        self._pending_reset = None
