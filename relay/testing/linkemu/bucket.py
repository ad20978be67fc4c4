"""
A token bucket that paces bytes against an injected clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Capacity of a bucket, in seconds of its rate: how much may go out in one
#: burst after an idle spell. Kept short so that measured throughput tracks
#: the configured rate even over a second or two.
BURST_SECONDS = 0.05

#: Size of one paced write, in seconds of the rate (bounded below and above).
SLICE_SECONDS = 0.02
MIN_SLICE_BYTES = 512
MAX_SLICE_BYTES = 64 * 1024

# Float arithmetic may leave a bucket a hair below zero after waiting exactly
# the computed time; a fraction of a byte of debt counts as paid.
_EPSILON_BYTES = 0.01


class TokenBucket:
    """
    A token bucket in "debt" form: a sender may send whenever the balance is
    not negative, and sending subtracts what was sent, possibly going into
    debt. Over any interval of length M{t} at most M{capacity + rate * t +
    slice} bytes pass, where M{slice} is the largest single send.

    A rate of C{None} means unlimited: L{wait_time} is always zero.
    """

    def __init__(self, clock: IReactorTime, rate: float | None) -> None:
        self._clock = clock
        self._rate = rate
        self._stamp = clock.seconds()
        self._tokens = self.capacity

    @property
    def rate(self) -> float | None:
        """Bytes per second, or C{None} for unlimited."""
        return self._rate

    @property
    def capacity(self) -> float:
        """The largest balance the bucket accumulates while idle."""
        if self._rate is None:
            return 0.0
        return max(float(MIN_SLICE_BYTES), self._rate * BURST_SECONDS)

    @property
    def slice_bytes(self) -> int | None:
        """The largest write a sender should make at once, or C{None}."""
        if self._rate is None:
            return None
        return int(min(MAX_SLICE_BYTES, max(MIN_SLICE_BYTES, self._rate * SLICE_SECONDS)))

    def set_rate(self, rate: float | None) -> None:
        """Change the rate; tokens earned so far are kept (up to capacity)."""
        self._refill()
        was_unlimited = self._rate is None
        self._rate = rate
        if rate is None:
            self._tokens = 0.0
        elif was_unlimited:
            self._tokens = self.capacity
        else:
            self._tokens = min(self._tokens, self.capacity)

    def wait_time(self) -> float:
        """Seconds until the bucket allows a send; 0 if it allows one now."""
        if self._rate is None:
            return 0.0
        self._refill()
        if self._tokens >= -_EPSILON_BYTES:
            return 0.0
        return -self._tokens / self._rate

    def consume(self, amount: int) -> None:
        """Record that C{amount} bytes were sent."""
        if self._rate is None:
            return
        self._refill()
        self._tokens -= amount

    def _refill(self) -> None:
        now = self._clock.seconds()
        # Wall clocks can step backwards; never refund time.
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        if self._rate is not None:
            self._tokens = min(self.capacity, self._tokens + elapsed * self._rate)


class SharedBucket:
    """
    A L{TokenBucket} shared by several senders, served in turn: a sender that
    finds the bucket in debt (or others already waiting) joins a queue and is
    called back when its turn comes, for one send. Without the queue, the
    sender whose timer happens to fire first wins every time.
    """

    def __init__(self, clock: IReactorTime, rate: float | None) -> None:
        self._clock = clock
        self.bucket = TokenBucket(clock, rate)
        self._waiting: deque[Callable[[], None]] = deque()
        self._granted: Callable[[], None] | None = None
        self._timer: IDelayedCall | None = None

    @property
    def slice_bytes(self) -> int | None:
        return self.bucket.slice_bytes

    def set_rate(self, rate: float | None) -> None:
        self.bucket.set_rate(rate)
        self._cancel_timer()
        self._arm()

    def request(self, sender: Callable[[], None]) -> bool:
        """
        Whether C{sender} may send now. If not, C{sender} is queued and will
        be called (with no arguments) when it may try again.
        """
        if self._granted is sender:
            self._granted = None
            return True
        if not self._waiting and self.bucket.wait_time() == 0:
            return True
        if sender not in self._waiting:
            self._waiting.append(sender)
        self._arm()
        return False

    def consume(self, amount: int) -> None:
        self.bucket.consume(amount)

    def withdraw(self, sender: Callable[[], None]) -> None:
        """Forget C{sender} (it stalled, closed, or has nothing to send)."""
        if sender in self._waiting:
            self._waiting.remove(sender)
        if self._granted is sender:
            self._granted = None
        if not self._waiting:
            self._cancel_timer()

    def _arm(self) -> None:
        if self._timer is None and self._waiting:
            self._timer = self._clock.callLater(self.bucket.wait_time(), self._serve)

    def _serve(self) -> None:
        self._timer = None
        try:
            if self._waiting and self.bucket.wait_time() == 0:
                sender = self._waiting.popleft()
                self._granted = sender
                sender()
                # A sender that could not use its turn (paused, stalled,
                # waiting on its own bucket) asks again later, from the back.
                if self._granted is sender:
                    self._granted = None
        finally:
            self._arm()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
