"""
A database that does its work at once, in the calling thread, for unit tests
that drive time and events by hand (C{SynchronousTestCase}, C{Clock}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from relay.db import Schema, connect, migrate, transaction

R = TypeVar("R")


class SynchronousDatabase:
    """
    The L{relay.db.Database} API (C{run}, C{read}, C{run_now}) with every
    call finished before it returns.
    """

    dialect = "sqlite"

    def __init__(self, path: Path | str, schemas: Sequence[Schema] = ()) -> None:
        self.path = Path(path)
        self.conn = connect(self.path)
        for schema in schemas:
            migrate(self.conn, schema)

    def run(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        try:
            return succeed(transaction(self.conn, work, *args))
        except Exception:
            return fail()

    def read(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        try:
            return succeed(work(self.conn, *args))
        except Exception:
            return fail()

    def run_now(self, work: Callable[..., R], *args: Any) -> R:
        return transaction(self.conn, work, *args)
