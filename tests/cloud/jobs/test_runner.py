"""
The runner with real processes: output passed on whole and in order, exit
statuses, and no surviving process after a cancel, a timeout or a command
that leaves a setsid double-forked sleeper behind (counted in /proc).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial import unittest

from relay.cloud.jobs.runner import JobProcess, Limits, Outcome

ENV = {"PATH": "/usr/bin:/bin"}

#: Forks a child that calls setsid and forks again; the grandchild sleeps
#: and writes its pid to sleeper.pid.  Then the command itself sleeps, or
#: exits (argument "exit").
ESCAPER = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open("sleeper.pid", "w").write(str(os.getpid()))
        time.sleep(600)
    os._exit(0)
time.sleep(0.5)
if sys.argv[1] == "exit":
    sys.exit(0)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class RunnerTests(unittest.TestCase):
    timeout = 60

    def run_command(
        self, argv: list[str], *, timeout: float = 30, limits: Limits | None = None
    ) -> tuple[JobProcess, list[tuple[int, bytes]]]:
        self.workdir = Path(self.mktemp()).resolve()
        self.workdir.mkdir(parents=True)
        output: list[tuple[int, bytes]] = []
        process = JobProcess(reactor, argv, self.workdir, ENV, limits or Limits(), timeout=timeout, grace=1.0,
                             on_output=lambda offset, data: output.append((offset, data)))  # fmt: skip
        process.start()
        return process, output

    async def sleeper(self) -> int:
        path = self.workdir / "sleeper.pid"
        for _ in range(100):
            if path.exists() and path.read_text():
                return int(path.read_text())
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("the sleeper never started")

    async def no_survivor(self, pid: int) -> None:
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(alive(pid), f"process {pid} survived")

    async def test_output_is_whole_and_in_order(self) -> None:
        process, output = self.run_command(["sh", "-c", "echo one; echo two >&2; echo three"])
        outcome: Outcome = await process.finished
        self.assertEqual(outcome.state, "succeeded")
        self.assertEqual(b"".join(d for _, d in output), b"one\ntwo\nthree\n")
        offsets = [o for o, _ in output]
        self.assertEqual(offsets, [sum(len(d) for _, d in output[:i]) for i in range(len(output))])

    async def test_exit_status_and_missing_program(self) -> None:
        process, _ = self.run_command(["sh", "-c", "exit 3"])
        self.assertEqual((await process.finished).state, "failed")
        process, output = self.run_command(["no-such-program-here"])
        outcome = await process.finished
        self.assertEqual((outcome.state, outcome.exit_code), ("failed", 127))
        self.assertIn(b"cannot run", b"".join(d for _, d in output))

    async def test_cancel_kills_a_setsid_double_fork(self) -> None:
        process, _ = self.run_command([sys.executable, "-c", ESCAPER, "sleep"])
        pid = await self.sleeper()
        process.stop("cancelled")
        self.assertEqual((await process.finished).state, "cancelled")
        await self.no_survivor(pid)

    async def test_timeout_kills_a_setsid_double_fork(self) -> None:
        process, _ = self.run_command([sys.executable, "-c", ESCAPER, "sleep"], timeout=1.5)
        pid = await self.sleeper()
        outcome = await process.finished
        self.assertEqual(outcome.state, "timed_out")
        await self.no_survivor(pid)

    async def test_leftovers_of_a_finished_command_are_killed(self) -> None:
        process, _ = self.run_command([sys.executable, "-c", ESCAPER, "exit"])
        pid = await self.sleeper()
        self.assertEqual((await process.finished).state, "succeeded")
        await self.no_survivor(pid)

    async def test_cpu_limit(self) -> None:
        process, _ = self.run_command([sys.executable, "-c", "while True: pass"], limits=Limits(cpu_seconds=1))
        outcome = await process.finished
        self.assertEqual(outcome.state, "failed")
        self.assertIn("signal", outcome.reason)

    async def test_a_flood_of_output_is_passed_on_not_kept(self) -> None:
        def rss() -> int:
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
            raise AssertionError

        before = rss()
        size = 200 << 20
        process, output = self.run_command(["head", "-c", str(size), "/dev/zero"])
        counted = 0
        while not process.finished.called:
            counted += sum(len(d) for _, d in output)
            output.clear()
            await deferLater(reactor, 0.01, lambda: None)
        counted += sum(len(d) for _, d in output)
        self.assertEqual(counted, size)
        self.assertLess(rss() - before, 100 << 20)

