"""
The timer that keeps the replica asking: a C{sync.hello} when the edge
starts (and when the link comes back, if the link calls L{SyncMonitor.link_up}),
and the periodic checks of L{ReplicaApplier.tick}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from relay.db import Database
from relay.edge.replica.applier import ReplicaApplier
from relay.replication import IOutbox


class SyncMonitor(TimerService):
    """
    Runs L{ReplicaApplier.tick} every C{interval} seconds while the link is
    up (C{connected}); errors are logged and the timer carries on.  While
    the link is down nothing is asked: each request would wait in the
    outbox, and all of them would be answered once it is back.
    """

    log = Logger()

    def __init__(
        self, db: Database, applier: ReplicaApplier, outbox: IOutbox, *, interval: float = 5.0,
        connected: Callable[[], bool] = lambda: True,
    ) -> None:
        super().__init__(interval, self.tick)
        self._connected = connected
        self._db = db
        self._applier = applier
        self._outbox = outbox
        self._hello_due = True

    def link_up(self) -> None:
        """
        The broker connection is (back) up: say hello now.
        """
        self._hello_due = True
        if self.running:
            self.tick()

    def tick(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._tick())

    async def _tick(self) -> None:
        if not self._connected():
            return
        hello, self._hello_due = self._hello_due, False
        try:
            if await self._db.run(self._applier.tick, hello):
                self._outbox.wake()
        except Exception:
            self._hello_due = self._hello_due or hello
            self.log.failure("replica housekeeping failed; trying again next round")
