"""
One pass at a time over work that keeps arriving: the pump under the
outbox, the inbox's group commits and the cloud's transfer requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


class Drain:
    """
    Runs C{work} whenever there may be something to do, never twice at once.

    L{wake} says there may be work: a pass starts at once when none is
    running, and one more follows the running pass otherwise, however many
    wakes came meanwhile.  A pass returns whether it left work that the next
    pass should do at once (a full batch, say).  Passes stop when none is
    owed, or when C{ready} says that none can be done now (no channel, the
    service stopped); the next wake starts them again.

    @param work: one pass; fires with C{True} to have another at once.
    @param failed: told when a pass raised; the passes stop until the next
        wake (which C{failed} may schedule).
    @param ready: whether a pass may run now.
    """

    __slots__ = ("_work", "_failed", "_ready", "_owed", "_running")

    def __init__(
        self,
        work: Callable[[], Awaitable[bool]],
        failed: Callable[[Failure], object],
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._work = work
        self._failed = failed
        self._ready = ready
        self._owed = False
        self._running = False

    @property
    def running(self) -> bool:
        """
        Whether a pass is under way.
        """
        return self._running

    def wake(self) -> None:
        """
        There may be work: run a pass now, or once more after this one.
        """
        self._owed = True
        if not self._running:
            Deferred.fromCoroutine(self._passes())

    async def _passes(self) -> None:
        self._running = True
        try:
            while self._owed and self._ready():
                self._owed = False
                if await self._work():
                    self._owed = True
        except Exception:
            self._failed(Failure())
        finally:
            self._running = False
