"""
One run of a job's command, from the worker's side: spawned through the
shepherd (L{relay.cloud.jobs.shepherd}), its output handed on as it
arrives, stopped on cancel or timeout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.python.failure import Failure


@dataclass(frozen=True)
class Limits:
    """
    rlimits of a run (C{None}: not limited).
    """

    cpu_seconds: int | None = None
    memory_bytes: int | None = None
    open_files: int | None = None
    file_bytes: int | None = None


@dataclass(frozen=True)
class Outcome:
    """
    How a run ended: C{succeeded}, C{failed}, C{cancelled} or C{timed_out},
    with the reason in words.
    """

    state: str
    reason: str
    exit_code: int | None = None


class _Protocol(protocol.ProcessProtocol):
    def __init__(self, run: JobProcess) -> None:
        self._run = run

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._run._output(data)

    def processEnded(self, reason: Failure) -> None:
        self._run._ended(reason)


class JobProcess:
    """
    The command of one run, started by L{start}; L{finished} fires with its
    L{Outcome}.  stdout and stderr are one stream: C{on_output(offset,
    data)} gets each piece as it arrives (nothing is kept here).
    """

    def __init__(
        self, reactor: Any, argv: list[str], workdir: Path, env: dict[str, str], limits: Limits, *,
        timeout: float, grace: float, on_output: Callable[[int, bytes], None],
    ) -> None:
        self._reactor = reactor
        self._argv = argv
        self._workdir = workdir
        self._env = env
        self._limits = limits
        self._timeout = timeout
        self._grace = grace
        self._on_output = on_output
        self._offset = 0
        self._stopped: str | None = None
        self._transport: Any = None
        self._calls: list[Any] = []
        self.finished: Deferred[Outcome] = Deferred()

    def start(self) -> None:
        spec = json.dumps({"argv": self._argv, "limits": asdict(self._limits), "grace": self._grace})
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            self._transport = self._reactor.spawnProcess(
                _Protocol(self), sys.executable, [sys.executable, "-m", "relay.cloud.jobs.shepherd", spec],
                env={**self._env, "PYTHONPATH": _package_root()}, path=str(self._workdir),
                childFDs={0: devnull, 1: "r", 2: "r"},
            )
        finally:
            os.close(devnull)
        self._calls.append(self._reactor.callLater(self._timeout, self.stop, "timed_out"))

    def stop(self, why: str = "cancelled") -> None:
        """
        Stop the run (C{cancelled} or C{timed_out}): the shepherd stops the
        whole process tree; if it has not ended well after the grace
        period, it is killed too.
        """
        if self._stopped is not None or self._transport is None or self.finished.called:
            return
        self._stopped = why
        self._signal(signal.SIGTERM)
        self._calls.append(self._reactor.callLater(self._grace + 5.0, self._signal, signal.SIGKILL))

    def _signal(self, number: int) -> None:
        try:
            self._transport.signalProcess(number)
        except ProcessExitedAlready:
            pass

    def _output(self, data: bytes) -> None:
        offset = self._offset
        self._offset += len(data)
        self._on_output(offset, data)

    def _ended(self, reason: Failure) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        code = getattr(reason.value, "exitCode", None)
        if self._stopped == "timed_out":
            outcome = Outcome("timed_out", f"timed out after {self._timeout:g} s", code)
        elif self._stopped == "cancelled":
            outcome = Outcome("cancelled", "cancelled", code)
        elif reason.check(ProcessDone):
            outcome = Outcome("succeeded", "exit status 0", 0)
        elif code is not None and code > 128:
            outcome = Outcome("failed", f"killed by signal {code - 128} ({_signal_name(code - 128)})", code)
        elif code == 127:
            outcome = Outcome("failed", "the program could not be started (exit status 127)", code)
        else:
            outcome = Outcome("failed", f"exit status {code}", code)
        self.finished.callback(outcome)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"


def _package_root() -> str:
    # The shepherd runs from relay's own tree, whatever the job's PATH.
    return str(Path(__file__).resolve().parents[3])
