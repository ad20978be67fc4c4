"""
The runner with real processes: output passed on whole and in order, exit
statuses, rlimits, bounded memory, and no surviving process after a
cancel, a timeout, a command that leaves a setsid double-forked sleeper
behind, or the death of the worker (counted in /proc).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from relay.cloud.jobs import shepherd
from relay.cloud.jobs.runner import JobProcess, Limits, Outcome

ENV = {"PATH": "/usr/bin:/bin"}

#: Writes its pid to command.pid, forks a child that calls setsid and
#: forks again; the grandchild ignores SIGTERM (so only SIGKILL ends it),
#: writes its pid to sleeper.pid and sleeps.  Then the command itself
#: sleeps, or exits 0 (argument "exit").
ESCAPER = """
import os, signal, sys, time
open("command.pid", "w").write(str(os.getpid()))
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("sleeper.pid.tmp", "w").write(str(os.getpid()))
        os.rename("sleeper.pid.tmp", "sleeper.pid")
        time.sleep(600)
    os._exit(0)
while not os.path.exists("sleeper.pid"):
    time.sleep(0.01)
if sys.argv[1] == "exit":
    sys.exit(0)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    """
    Whether C{pid} is a process that has not ended (a zombie has).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def pause(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class RunnerTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)

    def run_command(
        self, argv: list[str], *, timeout: float = 30, limits: Limits | None = None
    ) -> tuple[JobProcess, list[tuple[int, bytes]]]:
        output: list[tuple[int, bytes]] = []
        process = JobProcess(reactor, argv, self.workdir, ENV, limits or Limits(), timeout=timeout, grace=1.0,
                             on_output=lambda offset, data: output.append((offset, data)))
        process.start()
        return process, output

    async def escaper_pids(self) -> list[int]:
        """
        The pids of L{ESCAPER}'s command and sleeper, once both run.
        """
        path = self.workdir / "sleeper.pid"
        deadline = time.monotonic() + 10
        while not path.exists():
            self.assertLess(time.monotonic(), deadline, "the sleeper never started")
            await pause(0.02)
        pids = [int((self.workdir / name).read_text()) for name in ("command.pid", "sleeper.pid")]
        self.assertTrue(alive(pids[1]), pids)
        return pids

    async def assert_no_survivor(self, pids: list[int]) -> None:
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            await pause(0.05)
        self.assertEqual([pid for pid in pids if alive(pid)], [])

    async def test_output_is_whole_and_in_order(self) -> None:
        process, output = self.run_command(
            ["sh", "-c", "echo one; echo two >&2; printf three; echo four >&2"]
        )
        outcome: Outcome = await process.finished
        self.assertEqual(outcome, Outcome("succeeded", "exit status 0", 0))
        self.assertEqual(b"".join(d for _, d in output), b"one\ntwo\nthreefour\n")
        offsets = [o for o, _ in output]
        self.assertEqual(offsets, [sum(len(d) for _, d in output[:i]) for i in range(len(output))])

    async def test_exit_status(self) -> None:
        process, _ = self.run_command(["sh", "-c", "exit 3"])
        self.assertEqual(await process.finished, Outcome("failed", "exit status 3", 3))

    async def test_missing_program(self) -> None:
        process, output = self.run_command(["no-such-program-here", "a"])
        outcome = await process.finished
        self.assertEqual((outcome.state, outcome.exit_code), ("failed", 127))
        self.assertIn(b"cannot run 'no-such-program-here'", b"".join(d for _, d in output))

    async def test_cancel_kills_a_setsid_double_fork(self) -> None:
        process, _ = self.run_command([sys.executable, "-c", ESCAPER, "sleep"])
        pids = await self.escaper_pids()
        process.stop("cancelled")
        process.stop("timed_out")  # only the first stop counts
        outcome = await process.finished
        self.assertEqual((outcome.state, outcome.reason), ("cancelled", "cancelled"))
        await self.assert_no_survivor(pids)

    async def test_timeout_kills_a_setsid_double_fork(self) -> None:
        process, _ = self.run_command([sys.executable, "-c", ESCAPER, "sleep"], timeout=1.5)
        pids = await self.escaper_pids()
        outcome = await process.finished
        self.assertEqual((outcome.state, outcome.reason), ("timed_out", "timed out after 1.5 s"))
        await self.assert_no_survivor(pids)

    async def test_a_lease_no_longer_renewed_stops_the_run(self) -> None:
        """
        The worker touches the lease file at each renewal; once it stops
        (stopped, hung, cut off from the database), the shepherd kills the
        whole tree before the lease can expire.
        """
        lease = self.workdir / "lease"
        lease.touch()
        output: list[bytes] = []
        process = JobProcess(reactor, [sys.executable, "-c", ESCAPER, "sleep"], self.workdir, ENV, Limits(),
                             timeout=30, grace=5.0, on_output=lambda _, data: output.append(data),
                             lease=lease, lease_timeout=2.0)
        process.start()
        pids = await self.escaper_pids()
        for _ in range(6):  # renewed for a while: the run goes on
            await pause(0.5)
            os.utime(lease)
        self.assertFalse(process.finished.called)
        renewed_at = time.monotonic()
        outcome = await process.finished
        self.assertEqual((outcome.state, outcome.signal), ("failed", signal.SIGKILL))
        self.assertLess(time.monotonic() - renewed_at, 2.0 + 1.5)
        self.assertEqual([pid for pid in pids if alive(pid)], [], "SIGKILL at once, no grace")
        self.assertIn(b"did not renew the job's lease for 2 s", b"".join(output))

    async def test_leftovers_of_a_finished_command_are_killed(self) -> None:
        process, _ = self.run_command([sys.executable, "-c", ESCAPER, "exit"])
        pids = await self.escaper_pids()
        self.assertEqual((await process.finished).state, "succeeded")
        # The sleeper ignores SIGTERM: the shepherd ended only after SIGKILL.
        self.assertEqual([pid for pid in pids if alive(pid)], [])
        process.stop("cancelled")  # too late: nothing changes
        self.assertEqual((await process.finished).state, "succeeded")

    async def test_a_killed_shepherd_ends_the_run(self) -> None:
        """
        With its shepherd gone (the OOM killer, a stray kill -9), a run
        still ends, though what the shepherd watched may hold its output
        pipe open.
        """
        process, _ = self.run_command([sys.executable, "-c", ESCAPER, "sleep"])
        pids = await self.escaper_pids()

        def kill_leftovers() -> None:
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)

        self.addCleanup(kill_leftovers)
        with open(f"/proc/{pids[0]}/stat") as f:
            shepherd_pid = int(f.read().rsplit(")", 1)[1].split()[1])
        os.kill(shepherd_pid, signal.SIGKILL)
        outcome = await process.finished
        self.assertEqual(
            (outcome.state, outcome.signal, outcome.reason),
            ("failed", signal.SIGKILL, "killed by signal 9 (SIGKILL)"),
        )

    async def test_cpu_limit(self) -> None:
        process, _ = self.run_command(
            [sys.executable, "-c", "while True: pass"], limits=Limits(cpu_seconds=1)
        )
        outcome = await process.finished
        self.assertEqual(outcome.state, "failed")
        self.assertIn(outcome.signal, (signal.SIGXCPU, signal.SIGKILL))
        self.assertIn("killed by signal", outcome.reason)

    async def test_file_size_limit(self) -> None:
        process, _ = self.run_command(
            ["head", "-c", "100000", "/dev/zero"], limits=Limits(file_bytes=1000)
        )
        # stdout is a pipe, not bound by RLIMIT_FSIZE; a file is.
        self.assertEqual((await process.finished).state, "succeeded")
        process, _ = self.run_command(["sh", "-c", "head -c 100000 /dev/zero > big"],
                                      limits=Limits(file_bytes=1000))
        outcome = await process.finished
        self.assertEqual(outcome.state, "failed")
        self.assertEqual((self.workdir / "big").stat().st_size, 1000)

    async def test_a_flood_of_output_is_passed_on_not_kept(self) -> None:
        before = rss()
        size = 200 << 20
        counted = [0]

        def count(offset: int, data: bytes) -> None:
            self.assertEqual(offset, counted[0])
            counted[0] += len(data)

        process = JobProcess(reactor, ["head", "-c", str(size), "/dev/zero"], self.workdir, ENV, Limits(),
                             timeout=30, grace=1.0, on_output=count)
        process.start()
        self.assertEqual((await process.finished).state, "succeeded")
        self.assertEqual(counted[0], size)
        self.assertLess(rss() - before, 100 << 20)


class WorkerDeathTests(unittest.TestCase):
    timeout = 30

    async def test_the_tree_dies_with_the_worker(self) -> None:
        """
        A worker killed with SIGKILL cannot stop its runs: the shepherd's
        death signal does.
        """
        workdir = Path(self.mktemp()).resolve()
        workdir.mkdir(parents=True)
        shepherd_argv = shepherd.command_line(
            {"argv": [sys.executable, "-c", ESCAPER, "sleep"], "limits": {}, "grace": 1.0}
        )
        worker = subprocess.Popen(
            [sys.executable, "-c",
             "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(600)",
             *shepherd_argv],
            cwd=workdir, env=ENV,
        )
        self.addCleanup(worker.wait)
        self.addCleanup(worker.kill)
        path = workdir / "sleeper.pid"
        deadline = time.monotonic() + 10
        while not path.exists():
            self.assertLess(time.monotonic(), deadline, "the sleeper never started")
            await pause(0.02)
        pids = [int((workdir / name).read_text()) for name in ("command.pid", "sleeper.pid")]
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            await pause(0.05)
        self.assertEqual([pid for pid in pids if alive(pid)], [])


def test_a_closed_log_still_gives_its_tail(tmp_path: Path) -> None:
    """
    The worker closes a failed run's log (to store it) before it takes the
    last lines for the job's error.
    """
    from relay.cloud.jobs.output import RunLog

    log = RunLog(tmp_path / "log", 1 << 20)
    log.write(0, b"one\ntwo\nsynthesis failed\n")
    log.close()
    assert log.tail(2) == "two\nsynthesis failed"
