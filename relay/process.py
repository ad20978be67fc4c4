"""
Process-level behaviour shared by both twistd processes.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger


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
