"""
relay.threads.Threads on the real reactor (its work runs on its own named
threads), and relay.testing.reactor's stand-ins for it and the reactor.
"""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relay.testing.reactor import TestReactor, inline, reactor_for
from relay.threads import Threads


class ThreadsTests(TestCase):
    async def test_work_runs_on_the_pool_and_results_come_back(self) -> None:
        threads = Threads(reactor, "test-pool", 2)
        threads.startService()
        try:
            name = await threads.run(lambda: threading.current_thread().name)
            self.assertIn("test-pool", name)
            self.assertNotEqual(name, threading.current_thread().name)
            with self.assertRaises(ZeroDivisionError):
                await threads.run(lambda: 1 / 0)
        finally:
            await threads.stopService()

    async def test_stopping_waits_for_work_in_progress(self) -> None:
        threads = Threads(reactor, "test-pool", 1)
        threads.startService()
        started, stopping = threading.Event(), threading.Event()
        done: list[str] = []

        def work() -> None:
            started.set()
            # Still in progress when the stop begins: it ends only then.
            stopping.wait(5)
            done.append("finished")

        pool = threads._pool
        stop = pool.stop

        def stopping_then_stop() -> None:
            stopping.set()
            stop()

        self.patch(pool, "stop", stopping_then_stop)
        running = threads.run(work)
        started.wait(5)
        await threads.stopService()
        self.assertEqual(done, ["finished"])
        await running

    async def test_a_pool_never_started_stops_at_once(self) -> None:
        await Threads(reactor, "test-pool", 1).stopService()


class TestReactorTests(SynchronousTestCase):
    def test_calls_from_threads_wait_for_the_next_turn(self) -> None:
        clock = TestReactor()
        calls: list[int] = []
        clock.callFromThread(calls.append, 1)
        self.assertEqual(calls, [])
        clock.turn()
        self.assertEqual(calls, [1])

    def test_its_thread_pool_runs_work_in_place(self) -> None:
        clock = TestReactor()
        d = deferToThreadPool(clock, clock.getThreadPool(), lambda: threading.current_thread().name)
        clock.turn()
        self.assertEqual(self.successResultOf(d), threading.current_thread().name)
        failed = deferToThreadPool(clock, clock.getThreadPool(), lambda: 1 / 0)
        clock.turn()
        self.failureResultOf(failed, ZeroDivisionError)

    def test_inline_work_has_fired_on_return(self) -> None:
        self.assertEqual(self.successResultOf(inline(sum, [1, 2])), 3)
        self.failureResultOf(inline(lambda: 1 / 0), ZeroDivisionError)

    def test_a_test_that_leaves_calls_pending_fails(self) -> None:
        class Leaves(SynchronousTestCase):
            def test_it(self) -> None:
                reactor_for(self).callLater(5, lambda: None)

        class Cleans(SynchronousTestCase):
            def test_it(self) -> None:
                reactor_for(self).callLater(5, lambda: None).cancel()

        from twisted.trial.reporter import TestResult

        left, clean = TestResult(), TestResult()
        Leaves("test_it").run(left)
        Cleans("test_it").run(clean)
        self.assertFalse(left.wasSuccessful())
        [(_, problem)] = left.failures + left.errors
        self.assertIn("left 1 calls pending", str(problem.value))
        self.assertTrue(clean.wasSuccessful())
