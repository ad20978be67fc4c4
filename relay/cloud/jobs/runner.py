"""
One run of a job's command, from the worker's side: spawned through the
shepherd (L{relay.cloud.jobs.shepherd}), its output handed on as it
arrives, stopped on cancel or timeout.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.python.failure import Failure

from relay.cloud.jobs.shepherd import command_line

#: How a run ended.
State = Literal["succeeded", "failed", "cancelled", "timed_out"]
#: Why a run is stopped before its command ends.
StopReason = Literal["cancelled", "timed_out"]

#: Seconds after the grace period before the shepherd itself is killed: it
#: needs the grace period and a little more to kill the tree it watches.
SHEPHERD_SLACK = 5.0
#: Seconds the output pipes may stay open once the shepherd has exited.
PIPE_SLACK = 2.0


@dataclass(frozen=True)
class Limits:
    """
    rlimits of a run's command (C{None}: not limited).

    @ivar cpu_seconds: C{RLIMIT_CPU}; past it the command gets SIGXCPU.
    @ivar memory_bytes: C{RLIMIT_AS}, its address space.
    @ivar open_files: C{RLIMIT_NOFILE}.
    @ivar file_bytes: C{RLIMIT_FSIZE}, the largest file it may write.
    """

    cpu_seconds: int | None = None
    memory_bytes: int | None = None
    open_files: int | None = None
    file_bytes: int | None = None


@dataclass(frozen=True)
class Outcome:
    """
    How a run ended.

    @ivar state: C{succeeded} (exit status 0), C{failed} (another status,
        or killed by a signal), C{cancelled} or C{timed_out}.
    @ivar reason: the same in words (C{"exit status 2"}, C{"killed by
        signal 9 (SIGKILL)"}, C{"timed out after 30 s"}).
    @ivar exit_code: the command's exit status, if it exited.
    @ivar signal: the number of the signal that killed it, if one did.
    """

    state: State
    reason: str
    exit_code: int | None = None
    signal: int | None = None


class _ShepherdProtocol(protocol.ProcessProtocol):
    def __init__(self, run: JobProcess) -> None:
        self._run = run

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self._run._output(data)

    def processExited(self, reason: Failure) -> None:
        self._run._exited()

    def processEnded(self, reason: Failure) -> None:
        self._run._ended(reason)


class JobProcess:
    """
    The command of one run, with no shell, started by L{start}; L{finished}
    fires with its L{Outcome} once the command and everything it started
    have ended.

    stdout and stderr are one stream (the shepherd joins them, so their
    order is kept): C{on_output(offset, data)} gets each piece as it
    arrives, C{offset} being where C{data} starts in that stream.  Nothing
    is kept here: the caller caps what it keeps.

    @ivar finished: fires with the L{Outcome}; never fails.
    """

    def __init__(
        self,
        reactor: Any,
        argv: list[str],
        workdir: Path,
        env: dict[str, str],
        limits: Limits,
        *,
        timeout: float,
        grace: float,
        on_output: Callable[[int, bytes], None],
        lease: Path | None = None,
        lease_timeout: float = 0.0,
        user: tuple[int, int] | None = None,
    ) -> None:
        """
        @param reactor: an C{IReactorProcess} and C{IReactorTime}.
        @param argv: the command; C{argv[0]} is looked up on C{env}'s
            C{PATH}.
        @param workdir: its working directory.
        @param env: its whole environment.
        @param timeout: seconds from L{start} after which it is stopped
            as C{timed_out}.
        @param grace: seconds between SIGTERM and SIGKILL when the
            process tree is stopped.
        @param on_output: called with C{(offset, data)} for each piece of
            output.
        @param lease: a file the caller touches each time it renews the
            job's lease: the shepherd stops the run (exit status 137) once
            it was not touched for C{lease_timeout} seconds.
        @param user: the uid and gid the command runs as (the caller must
            be root: the shepherd stays root, so it can always stop what the
            command started); C{None}: the caller's.
        """
        self._reactor = reactor
        self._argv = argv
        self._workdir = workdir
        self._env = env
        self._limits = limits
        self._timeout = timeout
        self._grace = grace
        self._on_output = on_output
        self._lease = lease
        self._lease_timeout = lease_timeout
        self._user = user
        self._offset = 0
        self._stopped: StopReason | None = None
        self._transport: Any = None
        self._calls: list[Any] = []
        self.finished: Deferred[Outcome] = Deferred()

    def start(self) -> None:
        """
        Spawn the shepherd, which runs the command, and start the timeout.
        """
        argv = command_line({
            "argv": self._argv, "limits": asdict(self._limits), "grace": self._grace,
            "parent": os.getpid(), "cwd": str(self._workdir),
            **({"lease": str(self._lease), "lease_timeout": self._lease_timeout} if self._lease else {}),
            **({"user": list(self._user)} if self._user else {}),
        })
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            self._transport = self._reactor.spawnProcess(
                _ShepherdProtocol(self), argv[0], argv,
                env=self._env, childFDs={0: devnull, 1: "r", 2: "r"},
            )
        finally:
            os.close(devnull)
        self._calls.append(self._reactor.callLater(self._timeout, self.stop, "timed_out"))

    def stop(self, why: StopReason = "cancelled") -> None:
        """
        Stop the run: the shepherd stops the whole process tree (SIGTERM,
        then SIGKILL after the grace period), and is itself killed if it
        has not ended L{SHEPHERD_SLACK} seconds after that.  Only the first
        call counts; once the run has ended, a call does nothing.

        @param why: the state the outcome will have.
        """
        if self._stopped is not None or self._transport is None or self.finished.called:
            return
        self._stopped = why
        self._signal(signal.SIGTERM)
        self._calls.append(
            self._reactor.callLater(self._grace + SHEPHERD_SLACK, self._signal, signal.SIGKILL)
        )

    def _signal(self, number: int) -> None:
        try:
            self._transport.signalProcess(number)
        except ProcessExitedAlready:
            pass

    def _output(self, data: bytes) -> None:
        offset = self._offset
        self._offset += len(data)
        self._on_output(offset, data)

    def _exited(self) -> None:
        # The run ends when the shepherd has exited and its output is read
        # to the end.  A process the shepherd could not stop (it was killed
        # itself) may hold the pipes open: they are closed after a while.
        self._calls.append(self._reactor.callLater(PIPE_SLACK, self._transport.loseConnection))

    def _ended(self, reason: Failure) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls.clear()
        self.finished.callback(self._outcome(reason.value))

    def _outcome(self, ended: Any) -> Outcome:
        code: int | None = getattr(ended, "exitCode", None)
        number: int | None = getattr(ended, "signal", None)
        if code is not None and code > 128:
            # The shepherd reports a command killed by signal N as 128 + N.
            number, code = code - 128, None
        if self._stopped == "timed_out":
            return Outcome("timed_out", f"timed out after {self._timeout:g} s", code, number)
        if self._stopped == "cancelled":
            return Outcome("cancelled", "cancelled", code, number)
        if number is not None:
            return Outcome(
                "failed", f"killed by signal {number} ({_signal_name(number)})", None, number
            )
        if code == 0:
            return Outcome("succeeded", "exit status 0", 0)
        if code == 127:
            return Outcome("failed", "the program could not be started (exit status 127)", code)
        return Outcome("failed", f"exit status {code}", code)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown"
