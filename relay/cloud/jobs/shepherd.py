"""
C{python -m relay.cloud.jobs.shepherd SPEC}: runs one job's command and
makes sure that, when it ends, nothing it started is left.

The shepherd is the worker's child and the command's parent.  It makes
itself a child subreaper (C{PR_SET_CHILD_SUBREAPER}), so every process the
command leaves behind, even one that called C{setsid} and forked twice,
is re-parented to it and can be found by walking C{/proc}; it asks to get
SIGTERM when the worker dies (C{PR_SET_PDEATHSIG}).  The command runs in a
session of its own with the kind's rlimits.  On SIGTERM (a cancel, a
timeout, the worker going away) and when the command exits, every
descendant gets SIGTERM, then SIGKILL after the grace period.  The exit
status is the command's (128 + N for signal N).

SPEC is JSON: C{{"argv": [...], "limits": {...}, "grace": seconds}}.
Standard library only: it runs before anything else in the job's process.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
_LIMITS = {
    "cpu_seconds": resource.RLIMIT_CPU,
    "memory_bytes": resource.RLIMIT_AS,
    "open_files": resource.RLIMIT_NOFILE,
    "file_bytes": resource.RLIMIT_FSIZE,
}


def descendants(root: int) -> set[int]:
    """
    Every living process below C{root}, from C{/proc}.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def reap() -> list[tuple[int, int]]:
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, status))


def kill_all(grace: float) -> None:
    """
    SIGTERM to every descendant, SIGKILL after C{grace} to what is left,
    until none is left.
    """
    me = os.getpid()
    for pid in descendants(me):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while descendants(me) and time.monotonic() < deadline:
        reap()
        time.sleep(0.05)
    while True:
        left = descendants(me)
        reap()
        if not left:
            return
        for pid in left:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.02)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def main() -> int:
    spec = json.loads(sys.argv[1])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:
        return 143  # the worker died before the death signal was armed
    stopping: list[int] = []
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, lambda n, _: stopping.append(n))
    pid = os.fork()
    if pid == 0:
        try:
            for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(number, signal.SIG_DFL)
            os.setsid()
            os.dup2(1, 2)  # one stream, in the order the command wrote it
            for name, value in spec.get("limits", {}).items():
                if value is not None:
                    resource.setrlimit(_LIMITS[name], (value, value))
            os.execvp(spec["argv"][0], spec["argv"])
        except BaseException as e:
            os.write(2, f"relay: cannot run {spec['argv'][0]!r}: {e}\n".encode())
        os._exit(127)
    grace = float(spec.get("grace", 5.0))
    status: int | None = None
    while status is None and not stopping:
        for done, raw in reap():
            if done == pid:
                status = _status(raw)
        if status is None and not stopping:
            time.sleep(0.05)
    kill_all(grace if stopping and status is None else min(grace, 1.0))
    for done, raw in reap():
        if done == pid and status is None:
            status = _status(raw)
    if stopping:
        return 143
    return status if status is not None else 143


if __name__ == "__main__":
    sys.exit(main())
