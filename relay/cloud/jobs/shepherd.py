"""
C{python -I -S -c LAUNCH SPEC} (L{command_line}, which imports this file): runs one job's command
and makes sure that, when it ends, nothing it started is left.

The shepherd is the worker's child and the command's parent.  It makes
itself a child subreaper (C{PR_SET_CHILD_SUBREAPER}), so every process the
command leaves behind, even one that called C{setsid} and forked twice,
is re-parented to it and can be found by walking C{/proc}; it asks to get
SIGTERM when the worker dies (C{PR_SET_PDEATHSIG}), and no set-user-id
program may give a descendant more privileges (C{PR_SET_NO_NEW_PRIVS}).
The command runs in a session of its own with the kind's rlimits, its
stderr joined to its stdout (one stream, in the order it was written).  On SIGTERM, SIGINT or
SIGHUP (a cancel, a timeout, the worker going away) every descendant gets
SIGTERM, then SIGKILL after the grace period, and the shepherd exits with
143.  When the command exits, whatever it left behind is stopped the same
way (with at most a second of grace) and the exit status is the command's
(128 + N if signal N killed it; 127 if it could not be started).

A worker that is alive but no longer holds the job's lease (stopped,
hung, cut off from the database) cannot tell the shepherd anything; so,
when the spec names a C{lease} file, the worker touches that file each
time it renews the lease, and a run whose file was not touched for
C{lease_timeout} seconds is stopped at once (SIGKILL to every descendant,
exit status 137) before the lease can expire and the job run elsewhere:
a job never runs twice at the same time.

SPEC is a dict, marshalled and in hex (L{command_line} writes it; the
worker and the shepherd are the same interpreter, and unmarshalling costs
nothing to import where C{json} costs a third of the shepherd's start-up,
which every job pays): C{{"argv": [...], "limits": {"cpu_seconds": ...,
"memory_bytes": ..., "open_files": ..., "file_bytes": ...}, "grace":
seconds, "parent": pid, "lease": path, "lease_timeout": seconds}};
C{parent} (optional) is the worker's pid, to notice a worker that died
before the death signal was armed; C{lease} and C{lease_timeout} are
optional too, and so is C{user} (C{[uid, gid]}): the command then runs as
that user with its groups, the shepherd itself staying root.  C{cwd} is the
command's working directory: the shepherd moves there itself, so that the
worker can start it with C{posix_spawn} (which cannot change directory)
instead of forking a large process for every job.
Standard library only, and not even site-packages (C{-S}): it runs before
anything else in the job's process.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import pwd
import resource
import signal
import sys
import time
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
_LIMITS = {
    "cpu_seconds": resource.RLIMIT_CPU,
    "memory_bytes": resource.RLIMIT_AS,
    "open_files": resource.RLIMIT_NOFILE,
    "file_bytes": resource.RLIMIT_FSIZE,
}
_STOPS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_STOPPED = 128 + signal.SIGTERM
_LEASE_LOST = 128 + signal.SIGKILL


def command_line(spec: dict[str, Any]) -> list[str]:
    """
    The arguments that run the shepherd for C{spec} with this interpreter:
    its own file, isolated (C{-I}: neither the job's environment nor its
    working directory can change which shepherd runs, and relay need not
    be installed) and without site-packages (C{-S}).
    """
    return [sys.executable, "-I", "-S", "-c", _LAUNCH, marshal.dumps(spec).hex()]


#: Imports this file as the module C{shepherd} from its own directory (put
#: last on C{sys.path}, after the standard library) and runs it: a module
#: imported, unlike a script, is read from its cached bytecode, which the
#: worker's own import of this module wrote, instead of being compiled for
#: every job.
_LAUNCH = (
    f"import sys; sys.path.append({os.path.dirname(os.path.abspath(__file__))!r}); import shepherd; "
    "sys.exit(shepherd.main(sys.argv[1:]))"
)


def descendants(root: int) -> set[int]:
    """
    Every process below C{root} (zombies included), from C{/proc}.
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
        # The command name may hold spaces and parentheses: fields follow the last ")".
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


def childless(reaped: dict[int, int]) -> bool:
    """
    Collect every child that has ended into C{reaped}; whether no child at
    all is left.  Then no descendant is left either: the shepherd is a
    subreaper, so a process below it whose parent ended is re-parented to
    it (before that parent's own end can be collected), and every
    descendant's line of parents ends at a child of the shepherd.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        reaped[pid] = status


def kill_all(grace: float, reaped: dict[int, int]) -> None:
    """
    SIGTERM to every descendant, then SIGKILL to what is left after
    C{grace} seconds, scanning again until nothing is left.  Children
    reaped on the way are added to C{reaped}.  With no child left (a
    command that left nothing behind) nothing is scanned.
    """
    me = os.getpid()
    if childless(reaped):
        return
    for pid in descendants(me):
        _signal(pid, signal.SIGTERM)
        _signal(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if childless(reaped) or not descendants(me):
            return
        time.sleep(0.02)
    while True:
        # Reap before scanning: a pid is signalled only while it is still
        # ours (an unreaped child of ours cannot be reused).
        if childless(reaped):
            return
        left = descendants(me)
        if not left:
            return
        for pid in left:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.01)


def _signal(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _limit(name: str, value: int) -> None:
    which = _LIMITS[name]
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)  # an unprivileged process cannot raise its hard limit
    resource.setrlimit(which, (value, value))


def _exec(spec: dict[str, Any], mask: set[int | signal.Signals]) -> None:
    """
    In the forked child: become the command.  Never returns.
    """
    argv = spec["argv"]
    try:
        # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays
        # ignored across exec: the command gets the defaults back.
        for number in _STOPS | {signal.SIGPIPE, signal.SIGXFSZ}:
            signal.signal(number, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.setsid()
        os.dup2(1, 2)
        for name, value in (spec.get("limits") or {}).items():
            if value is not None:
                _limit(name, int(value))
        if spec.get("user"):
            uid, gid = spec["user"]
            try:
                groups = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
            except KeyError:
                groups = [gid]
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
        os.execvp(argv[0], argv)
    except BaseException as e:
        try:
            os.write(2, f"relay: cannot run {argv[0] if argv else ''!r}: {e}\n".encode())
        finally:
            os._exit(127)


def main(args: list[str]) -> int:
    spec = marshal.loads(bytes.fromhex(args[0]))
    # Signals wait, blocked, until the loop below takes them: none is lost
    # between a check and a sleep.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS | {signal.SIGCHLD})
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # No set-user-id program makes a descendant someone the shepherd (an
    # unprivileged run user) could no longer kill.
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    parent = spec.get("parent")
    if parent is not None and os.getppid() != parent:
        return _STOPPED  # the worker died before the death signal was armed
    if spec.get("cwd") is not None:
        try:
            os.chdir(spec["cwd"])
        except OSError as e:
            os.write(1, f"relay: cannot enter the work directory: {e}\n".encode())
            return 127
    grace = float(spec.get("grace", 5.0))
    lease, lease_timeout = spec.get("lease"), float(spec.get("lease_timeout") or 0)
    command = os.fork()
    if command == 0:
        _exec(spec, mask)
    reaped: dict[int, int] = {}
    stopped = False
    while command not in reaped:
        received = signal.sigtimedwait(_STOPS | {signal.SIGCHLD}, 0.25 if lease else 1.0)
        childless(reaped)
        if received is not None and received.si_signo in _STOPS and command not in reaped:
            stopped = True
            break
        if lease and command not in reaped and not _renewed(lease, lease_timeout):
            os.write(1, f"relay: the worker did not renew the job's lease for {lease_timeout:g} s: "
                        "the run is stopped\n".encode())
            kill_all(0.0, reaped)
            return _LEASE_LOST
    kill_all(grace if stopped else min(grace, 1.0), reaped)
    if stopped:
        return _STOPPED
    return _status(reaped[command])


def _renewed(path: str, timeout: float) -> bool:
    """
    Whether the worker touched the lease file within C{timeout} seconds.
    """
    try:
        return time.time() - os.stat(path).st_mtime < timeout
    except OSError:
        return False  # the run's directory is gone: so is its worker


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
