"""
Process-level behaviour shared by both twistd processes.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, TypeVar

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

T = TypeVar("T")


class InOrder(MultiService):
    """
    Children start in the order they were added and stop one at a time in
    the reverse order, each only once the one added after it has finished.

    L{MultiService} calls every child's C{stopService} at once, so a
    service still at work during shutdown (recovering uploads, flushing an
    outbox) would find the database it writes to already closed and wait
    for it forever.  Here the database, added first, stops last.
    """

    log = Logger()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_children())

    async def _stop_children(self) -> None:
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("stopping {service} failed", service=child)


class GracefulStop(Service):
    """
    SIGTERM and SIGINT stop the reactor, every service stops in order, and
    the process exits with status 0.

    twistd's own handlers make the process re-raise the signal once the
    reactor has stopped, so a clean, requested shutdown would otherwise end
    with status 143 and look like a crash to tools that read it.  The
    handlers are replaced once the reactor runs, because the reactor installs
    its own during startup.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._stop)

    def _stop(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self._stopping:
            # A second signal (Ctrl-C reaching a whole process group, then a
            # supervisor's SIGTERM) must not stop the reactor twice.
            self.log.info("received {signal} while stopping", signal=name)
            return
        self._stopping = True
        self.log.info("received {signal}, stopping", signal=name)
        self._reactor.callFromThread(self._reactor.stop)


