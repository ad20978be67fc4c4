"""
Blocking work off the reactor's thread, one way: a bounded, named pool.

Spool I/O and hashing (uploads, the transfer stage), scrypt (identity),
boto3 (the cloud's object store) and a job's result hashing all block.
Each owner runs them through a L{Threads} of its own size, as
C{threads.run(fn, *args)}; a collaborator that only runs work and owns no
pool takes the bound method as a L{Blocking}.  Tests hand in
L{relay.testing.reactor.inline}, which does the work at once, in place of
C{run}.  (The database's single connection thread is a different thing:
L{relay.db.Database} serialises every transaction on it.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

R = TypeVar("R")

#: Runs C{fn(*args)} off the reactor's thread; fires on the reactor's
#: thread with its result (L{Threads.run}, or a test's
#: L{relay.testing.reactor.inline}).
Blocking = Callable[..., Deferred[Any]]


class Threads(Service):
    """
    A pool of at most C{size} threads for blocking work, started and
    stopped as a service (by its owner, or in the service tree).

    @param name: names the threads (C{spool}, C{s3}...), for debuggers and
        C{py-spy}.
    @param pool: the C{ThreadPool} to run on instead of a new one of
        C{size} threads (a test's L{relay.testing.reactor.InlineThreadPool}).
    """

    def __init__(self, reactor: Any, name: str, size: int, *, pool: Any = None) -> None:
        self._reactor = reactor
        self._pool = pool if pool is not None else ThreadPool(minthreads=0, maxthreads=size, name=name)
        self.name = name

    def run(self, fn: Callable[..., R], *args: Any) -> Deferred[R]:
        """
        Run C{fn(*args)} on a pool thread (queued while every thread is
        busy); fires with its result or fails with its error, on the
        reactor's thread.
        """
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop, once the work in progress is done (its own timeouts bound it):
        the threads are joined, so the owner stops when nothing else needs
        the reactor (the tree stops its children one at a time, in reverse).
        """
        if self.running:
            super().stopService()
            self._pool.stop()
        return succeed(None)
