"""
relay's one synchronous test database: the real L{relay.db.Database}
(the same SQL, SQLite or a PostgreSQL DSN, the same migrations) with no
thread, so C{run} and C{read} return Deferreds that have already fired.
For C{SynchronousTestCase}s driven by a C{Clock} or the test reactor, for
C{StubTreq}, and for helpers that seed a database before a process starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from relay.db import Connection, Database, Schema, transaction

R = TypeVar("R")


class SynchronousDatabase(Database):
    """
    Same interface and SQL as L{Database}, every call finished before it
    returns.  As a service it only marks itself running (and closes its
    connection when stopped).
    """

    def __init__(self, path: Path | str, schemas: Sequence[Schema] = ()) -> None:
        super().__init__(None, path, schemas)  # type: ignore[arg-type]

    @property
    def conn(self) -> Connection:
        """
        The connection itself, for tests that look at (or change) tables
        behind the components' backs.
        """
        return self._conn

    def startService(self) -> None:
        self.running = 1

    def stopService(self) -> Deferred[None]:
        if self.running:
            self.running = 0
            self.close()
        return succeed(None)

    def run(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        return maybeDeferred(transaction, self._conn, work, *args)

    def read(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        return maybeDeferred(work, self._conn, *args)
