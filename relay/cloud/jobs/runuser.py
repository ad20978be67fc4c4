"""
C{[jobs] run_user}: the unprivileged user a root worker runs the jobs'
commands as, and what the worker does to a run's directory for it.

The shepherd stays root (so it can always stop what the command started,
and read the lease file) and switches to the user only for the command
(L{relay.cloud.jobs.shepherd}).  The run's directory stays the worker's,
mode 0711: the user may pass through it, not list it, and cannot reach the
log or the lease file; its C{work} and C{tmp} directories, with the
inputs, are the user's.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunUser:
    """
    A user of this machine, by its ids.
    """

    name: str
    uid: int
    gid: int

    @classmethod
    def named(cls, name: str) -> RunUser:
        """
        @raise KeyError: no such user (the configuration checks first).
        """
        entry = pwd.getpwnam(name)
        return cls(name, entry.pw_uid, entry.pw_gid)

    def unsearchable(self, path: Path) -> Path | None:
        """
        The first directory on the way to C{path} the user may not pass
        through (by the mode bits), if any.
        """
        for directory in reversed([path.resolve(), *path.resolve().parents]):
            status = directory.stat()
            if status.st_uid == self.uid:
                bit = status.st_mode & 0o100
            elif status.st_gid == self.gid:
                bit = status.st_mode & 0o010
            else:
                bit = status.st_mode & 0o001
            if not bit:
                return directory
        return None

    def give(self, run_dir: Path) -> None:
        """
        The run's C{work} and C{tmp} directories, with what they hold, to
        the user; the run's directory itself only searchable.
        """
        run_dir.chmod(0o711)
        for top in (run_dir / "work", run_dir / "tmp"):
            os.chown(top, self.uid, self.gid)
            for parent, directories, files in os.walk(top):
                for name in directories + files:
                    os.chown(os.path.join(parent, name), self.uid, self.gid, follow_symlinks=False)
