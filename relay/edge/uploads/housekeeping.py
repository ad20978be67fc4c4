"""
Housekeeping for uploads: unfinished uploads past their expiry are
crypto-erased (the spool file's key destroyed, its data removed) and
forgotten.  Runs as a L{TimerService}; a failing sweep is logged and the
next one tries again.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relay.edge.uploads.service import UploadService

log = Logger()


class UploadHousekeeping(TimerService):
    """
    Every C{interval} seconds, erase expired unfinished uploads.
    """

    def __init__(self, service: UploadService, interval: float, clock: IReactorTime) -> None:
        super().__init__(interval, self.sweep)
        self.clock = clock
        self._uploads = service
        self.erased = 0

    def sweep(self) -> Deferred[None]:
        """One pass; never fails (errors are logged)."""
        if not self._uploads.ready:
            return Deferred.fromCoroutine(_nothing())
        return Deferred.fromCoroutine(self._sweep())

    async def _sweep(self) -> None:
        try:
            self.erased += len(await self._uploads.expire())
        except Exception:
            log.failure("upload housekeeping failed")


async def _nothing() -> None:
    return None
