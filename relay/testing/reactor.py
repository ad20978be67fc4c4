"""
relay's test reactor: a C{Clock} that is enough of a reactor for relay's
components, and blocking work done at once (after buildbot's test reactor).

  - L{TestReactor} adds to C{Clock} what production code asks of its
    reactor besides time: C{callFromThread} (the call runs on the next
    turn, as one from the database thread does after the transaction that
    made it), C{callWhenRunning} and a thread pool that runs work in place
    (C{getThreadPool}, so C{deferToThreadPool} works unchanged).
  - L{inline} is the L{relay.threads.Blocking} that tests hand in for a
    pool: the work runs at once and the Deferred has fired on return;
    L{inline_threads} is a L{Threads} service that does the same (its
    results arrive on the reactor's next turn, as a pool's do).
  - L{reactor_for} gives a test case a L{TestReactor} and fails the test
    if it leaves calls pending: a service it did not stop, a timer nobody
    cancels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relay.threads import Threads

R = TypeVar("R")


def inline(fn: Callable[..., R], *args: Any) -> Deferred[R]:
    """
    Do blocking work at once, in place of a thread pool's C{run}.
    """
    return maybeDeferred(fn, *args)


class InlineThreadPool:
    """
    The part of C{ThreadPool} that C{deferToThreadPool} uses, without
    threads: the work runs as it is handed over.
    """

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object], fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


def inline_threads(reactor: Any, name: str = "inline") -> Threads:
    """
    A L{Threads} whose work runs in place, on an L{InlineThreadPool}: for
    components that own their pool, on a L{TestReactor}.
    """
    return Threads(reactor, name, 1, pool=InlineThreadPool())


class TestReactor(Clock):
    """
    A C{Clock} with C{callFromThread}, C{callWhenRunning} and an inline
    thread pool.  Nothing runs until the test advances time: a call "from
    a thread" waits for C{advance(0)} (L{turn}).
    """

    __test__ = False  # not a test case, whatever pytest makes of its name

    def __init__(self) -> None:
        super().__init__()
        self._pool = InlineThreadPool()

    def callFromThread(self, f: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        self.callLater(0, f, *args, **kwargs)

    def callWhenRunning(self, f: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        self.callLater(0, f, *args, **kwargs)

    def getThreadPool(self) -> InlineThreadPool:
        return self._pool

    def turn(self, seconds: float = 0) -> None:
        """
        Let C{seconds} pass, then run what that made due at once (the calls
        from threads among them).
        """
        self.advance(seconds)
        self.advance(0)

    def pending(self) -> list[str]:
        """
        The calls still waiting, described.
        """
        return [str(call) for call in self.getDelayedCalls() if call.active()]


def reactor_for(case: SynchronousTestCase) -> TestReactor:
    """
    A L{TestReactor} for C{case}.  The test fails if calls are still
    pending once its other cleanups (which stop what it started: add them
    after calling this) have run.
    """
    reactor = TestReactor()

    def nothing_pending() -> None:
        left = reactor.pending()
        if left:
            case.fail(f"the test left {len(left)} calls pending on its reactor: {left}")

    case.addCleanup(nothing_pending)
    return reactor
