"""
relay.drain.Drain: one pass at a time, one more for the wakes that came
during a pass, and what a failing pass leaves.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relay.drain import Drain


class Passes:
    """
    A pass that waits until the test lets it end, with what it returns.
    """

    def __init__(self) -> None:
        self.started = 0
        self.pending: list[Deferred[bool]] = []

    async def work(self) -> bool:
        self.started += 1
        d: Deferred[bool] = Deferred()
        self.pending.append(d)
        return await d

    def finish(self, more: bool = False) -> None:
        self.pending.pop(0).callback(more)


class DrainTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.passes = Passes()
        self.failures: list[Failure] = []
        self.ready = True
        self.drain = Drain(self.passes.work, self.failures.append, ready=lambda: self.ready)

    def test_a_wake_runs_one_pass(self) -> None:
        self.drain.wake()
        self.assertEqual(self.passes.started, 1)
        self.assertTrue(self.drain.running)
        self.passes.finish()
        self.assertFalse(self.drain.running)
        self.assertEqual(self.passes.started, 1)

    def test_wakes_during_a_pass_run_exactly_one_more(self) -> None:
        self.drain.wake()
        for _ in range(5):
            self.drain.wake()
        self.assertEqual(self.passes.started, 1, "never two passes at once")
        self.passes.finish()
        self.assertEqual(self.passes.started, 2)
        self.passes.finish()
        self.assertEqual(self.passes.started, 2)
        self.assertFalse(self.drain.running)

    def test_a_pass_that_left_work_is_followed_by_another(self) -> None:
        self.drain.wake()
        self.passes.finish(more=True)
        self.passes.finish(more=True)
        self.passes.finish(more=False)
        self.assertEqual(self.passes.started, 3)
        self.assertFalse(self.drain.running)

    def test_no_pass_runs_while_not_ready_and_the_next_wake_starts_again(self) -> None:
        self.ready = False
        self.drain.wake()
        self.assertEqual(self.passes.started, 0)
        self.drain.wake()
        self.assertEqual(self.passes.started, 0)
        self.ready = True
        self.drain.wake()
        self.assertEqual(self.passes.started, 1)

    def test_becoming_unready_ends_the_passes_owed(self) -> None:
        self.drain.wake()
        self.ready = False
        self.passes.finish(more=True)
        self.assertEqual(self.passes.started, 1)
        self.assertFalse(self.drain.running)

    def test_a_failing_pass_is_reported_and_the_next_wake_runs_again(self) -> None:
        self.drain.wake()
        self.drain.wake()
        self.passes.pending.pop(0).errback(RuntimeError("disk gone"))
        [failure] = self.failures
        self.assertIsInstance(failure.value, RuntimeError)
        self.assertFalse(self.drain.running)
        self.assertEqual(self.passes.started, 1, "no pass after a failure until woken")
        self.drain.wake()
        self.assertEqual(self.passes.started, 2)
