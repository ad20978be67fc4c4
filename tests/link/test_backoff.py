"""Backoff: growth, cap, jitter bounds and the healthy-period reset, on a Clock."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relay.link.backoff import Backoff


class _Extremes(random.Random):
    """uniform() returns its upper (or lower) bound: the worst cases."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


class BackoffTests(SynchronousTestCase):
    def test_grows_exponentially_then_caps(self) -> None:
        backoff = Backoff(Clock(), initial=1.0, factor=2.0, cap=10.0, jitter="none")
        delays = [backoff.next_delay() for _ in range(7)]
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0])
        self.assertEqual(backoff.attempts, 7)

    def test_full_jitter_bounded_by_the_exponential_ceiling(self) -> None:
        backoff = Backoff(Clock(), initial=0.5, factor=3.0, cap=20.0, rng=random.Random(7))
        for n in range(200):
            ceiling = min(20.0, 0.5 * 3.0**n)
            delay = backoff.next_delay()
            self.assertTrue(0.0 <= delay <= ceiling, (n, delay, ceiling))

    def test_full_jitter_worst_case_follows_the_ceiling(self) -> None:
        backoff = Backoff(Clock(), initial=1.0, factor=2.0, cap=5.0, rng=_Extremes(high=True))
        self.assertEqual([backoff.next_delay() for _ in range(5)], [1.0, 2.0, 4.0, 5.0, 5.0])

    def test_full_jitter_spreads(self) -> None:
        backoff = Backoff(Clock(), initial=10.0, factor=1.0, cap=10.0, rng=random.Random(1))
        delays = {round(backoff.next_delay(), 3) for _ in range(50)}
        self.assertGreater(len(delays), 40)

    def test_decorrelated_jitter_bounded(self) -> None:
        backoff = Backoff(
            Clock(), initial=0.2, factor=3.0, cap=15.0, jitter="decorrelated", rng=random.Random(3)
        )
        previous = 0.2
        for _ in range(300):
            delay = backoff.next_delay()
            self.assertTrue(0.2 <= delay <= min(15.0, previous * 3.0), (delay, previous))
            previous = delay

    def test_decorrelated_worst_case_grows_to_cap(self) -> None:
        backoff = Backoff(
            Clock(), initial=1.0, factor=3.0, cap=30.0, jitter="decorrelated", rng=_Extremes(True)
        )
        self.assertEqual([backoff.next_delay() for _ in range(5)], [3.0, 9.0, 27.0, 30.0, 30.0])

    def test_no_overflow_after_many_attempts(self) -> None:
        backoff = Backoff(Clock(), initial=1.0, factor=10.0, cap=60.0, jitter="none")
        for _ in range(5000):
            delay = backoff.next_delay()
        self.assertEqual(delay, 60.0)

    def test_resets_after_the_healthy_period(self) -> None:
        clock = Clock()
        backoff = Backoff(
            clock, initial=1.0, factor=2.0, cap=60.0, healthy_after=30.0, jitter="none"
        )
        for _ in range(4):
            backoff.next_delay()
        backoff.connected()
        clock.advance(29.9)
        self.assertEqual(backoff.attempts, 4)
        clock.advance(0.2)
        self.assertEqual(backoff.attempts, 0)
        self.assertEqual(backoff.next_delay(), 1.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_does_not_reset_on_connect_alone(self) -> None:
        """A connection that drops before the healthy period keeps the count
        (the handshake-fails-after-TCP-connect case)."""
        clock = Clock()
        backoff = Backoff(
            clock, initial=1.0, factor=2.0, cap=60.0, healthy_after=30.0, jitter="none"
        )
        delays = []
        for _ in range(5):
            delays.append(backoff.next_delay())
            backoff.connected()
            clock.advance(29.0)
            backoff.disconnected()
        clock.advance(1000)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0])
        self.assertEqual(backoff.attempts, 5)
        self.assertEqual(backoff.next_delay(), 32.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_connection_that_carried_messages_resets_at_once(self) -> None:
        """On a link that resets every few seconds no connection lasts the
        healthy period; one that moved messages proves the link works."""
        clock = Clock()
        backoff = Backoff(clock, initial=1.0, factor=2.0, cap=60.0, healthy_after=30.0, jitter="none")
        for _ in range(4):
            backoff.next_delay()
        backoff.connected()
        clock.advance(3.0)
        backoff.proven()
        backoff.disconnected()
        self.assertEqual(backoff.attempts, 0)
        self.assertEqual(backoff.next_delay(), 1.0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_reconnect_restarts_the_healthy_timer(self) -> None:
        clock = Clock()
        backoff = Backoff(clock, healthy_after=10.0, jitter="none")
        backoff.next_delay()
        backoff.connected()
        clock.advance(9)
        backoff.connected()  # a second connect restarts the period, no double timer
        clock.advance(9)
        self.assertEqual(backoff.attempts, 1)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(1)
        self.assertEqual(backoff.attempts, 0)

    def test_rejects_nonsense(self) -> None:
        clock = Clock()
        self.assertRaises(ValueError, Backoff, clock, initial=0)
        self.assertRaises(ValueError, Backoff, clock, initial=5, cap=1)
        self.assertRaises(ValueError, Backoff, clock, factor=0.5)
        self.assertRaises(ValueError, Backoff, clock, jitter="some")  # type: ignore[arg-type]
