"""
The audit log: one JSON object per line, in a file of its own
(C{log.audit}, relative to the data directory), for the security-relevant
things people do: logins and their failures, API keys made and revoked,
membership and role changes, refused commands.  Each line says what
(C{event}), who (C{actor}), from where (C{address} or C{edge}) and when
(C{time}, Unix seconds, and C{at}, ISO 8601 UTC).

The file is created owner-only and only ever appended to; writing is
thread-safe (the cloud's commands are applied on its database thread).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IReactorTime


class AuditLog:
    """
    Appends audit records to C{path}.
    """

    def __init__(self, path: Path, clock: IReactorTime) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def record(self, event: str, *, actor: str | None, **fields: Any) -> None:
        """
        One record: C{event} (e.g. C{login.failed}), C{actor} (a user id or
        name, C{None} when unknown) and whatever else says what happened.
        """
        now = self._clock.seconds()
        line = json.dumps({
            "time": round(now, 3), "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            "event": event, "actor": actor, **fields,
        }, ensure_ascii=True, default=str)
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()
