"""
The timer that keeps the replica asking: a C{sync.hello} when the edge
starts (and when the link comes back, if the link calls L{SyncMonitor.link_up}),
and the periodic checks of L{ReplicaApplier.tick}.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from relay.db import Database
from relay.edge.replica.applier import ReplicaApplier
from relay.replication import IOutbox


class SyncMonitor(TimerService):
    """
    Runs L{ReplicaApplier.tick} every C{interval} seconds; errors are logged
    and the timer carries on.
    """

    log = Logger()

    def __init__(self, db: Database, applier: ReplicaApplier, outbox: IOutbox, *, interval: float = 5.0) -> None:
        super().__init__(interval, self.tick)
        self._db = db
        self._applier = applier
        self._outbox = outbox
        self._hello_due = True

    def link_up(self) -> None:
        """
        The broker connection is (back) up: say hello on the next tick.
        """
        self._hello_due = True

    def tick(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._tick())

    async def _tick(self) -> None:
        hello, self._hello_due = self._hello_due, False
        try:
            if await self._db.run(self._applier.tick, hello):
                self._outbox.wake()
        except Exception:
            self._hello_due = self._hello_due or hello
            self.log.failure("replica housekeeping failed; trying again next round")
