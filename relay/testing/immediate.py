"""
A L{Database} that does its work at once, in the calling thread, for
C{SynchronousTestCase}s and C{StubTreq}: C{run} and C{read} return
Deferreds that have already fired.  Unlike L{relay.testing.db}, it is the
real L{Database} underneath, so it also works on PostgreSQL (a DSN).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from relay.db import Database, Schema, transaction

R = TypeVar("R")


class ImmediateDatabase(Database):
    """
    Same interface and SQL as L{Database} (SQLite or a PostgreSQL DSN),
    no thread.
    """

    def __init__(self, path: Path | str, schemas: Sequence[Schema] = ()) -> None:
        super().__init__(None, path, schemas)  # type: ignore[arg-type]

    def startService(self) -> None:
        self.running = 1

    def stopService(self) -> Deferred[None]:
        self.running = 0
        self.close()
        return succeed(None)

    def run(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        return maybeDeferred(transaction, self._conn, work, *args)

    def read(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        return maybeDeferred(work, self._conn, *args)
