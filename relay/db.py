"""
The storage foundation both sides share: SQLite in WAL mode behind one
worker thread, with versioned schema migrations.

Every statement runs on the database's own thread, so a slow disk never
blocks the reactor; one thread also serialises writers, which is what SQLite
wants.  A unit of work is a plain function taking a C{sqlite3.Connection}; it
runs inside one transaction that commits when it returns and rolls back when
it raises::

    def record(conn, message_id):
        conn.execute("INSERT INTO inbox (id) VALUES (?)", (message_id,))

    await db.run(record, "m-1")

Each component owns a L{Schema}: a name and an ordered list of steps.  The
database remembers, per schema, how many steps it has applied, and applies
the rest at startup, each step in its own transaction.  Steps are never
edited once released; a change is a new step.

The cloud's database may instead be PostgreSQL (give L{Database} a
C{postgresql://} DSN).  The same steps and units of work run there through
L{relay.postgresql.PostgresConnection}, which takes C{?} placeholders and
translates the few SQLite spellings relay uses (see that module); write
portable SQL otherwise.  L{dialect} tells a unit of work which one it has.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Union

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

if TYPE_CHECKING:
    from relay.postgresql import PostgresConnection

P = ParamSpec("P")
R = TypeVar("R")

#: What a unit of work receives: SQLite's connection, or the PostgreSQL
#: adapter with the same C{execute} / C{executemany} / rows interface.
Connection = Union[sqlite3.Connection, "PostgresConnection"]

#: A migration step: SQL (one or more statements) or a function of the
#: connection for changes SQL alone cannot express.
Step = str | Callable[[Any], None]


@dataclass(frozen=True)
class Schema:
    """
    The tables one component owns, as the ordered steps that create them.
    """

    name: str
    steps: Sequence[Step]

    @property
    def version(self) -> int:
        return len(self.steps)


class MigrationError(Exception):
    """
    The database was written by a newer relay, or a step failed.
    """


_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_version (
    schema TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)
"""


def owner_only_file(path: Path) -> None:
    """
    Create C{path} readable by its owner only (whatever the umask), or make
    an existing one so, with a warning: databases hold password and key
    hashes.  SQLite gives its -wal and -shm files the database's mode.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            Logger().warn("{path} was readable by others (mode {mode:o}); made it 0600", path=path, mode=mode)
            os.chmod(path, 0o600)
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists() and stat.S_IMODE(side.stat().st_mode) & 0o077:
                os.chmod(side, 0o600)
    else:
        os.close(fd)


def connect(path: Path | str) -> sqlite3.Connection:
    """
    Open a connection configured the way relay uses SQLite.

    WAL lets readers run beside the writer; C{synchronous=FULL} makes a
    committed transaction survive a power cut, which the outbox and inbox
    promise.  Transactions are managed explicitly (C{isolation_level=None}).
    """
    if str(path) != ":memory:":
        owner_only_file(Path(path))
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def is_postgresql(target: Path | str) -> bool:
    """
    Whether a database target is a PostgreSQL DSN rather than a file.
    """
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_connection(target: Path | str) -> Connection:
    """
    Connect to a SQLite file or, for a C{postgresql://} DSN, to PostgreSQL.
    """
    if is_postgresql(target):
        from relay.postgresql import PostgresConnection

        return PostgresConnection(str(target))
    return connect(target)


def dialect(conn: Connection) -> str:
    """
    C{"sqlite"} or C{"postgresql"}: for the rare statement that must differ.
    """
    return "sqlite" if isinstance(conn, sqlite3.Connection) else "postgresql"


def database_errors() -> tuple[type[BaseException], ...]:
    """
    The exception classes a failing statement raises, for either dialect.
    """
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is optional for SQLite
        return (sqlite3.Error,)
    return (sqlite3.Error, psycopg.Error)


def transaction(conn: Connection, work: Callable[..., R], *args: Any) -> R:
    """
    Run C{work(conn, *args)} in one transaction: commit on return, roll back
    on an exception.  On PostgreSQL the transaction is serializable and is
    run again (a bounded number of times) when the server reports a
    serialization failure, so C{work} must only touch the database.
    """
    if not isinstance(conn, sqlite3.Connection):
        return conn.transaction(work, *args)
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work(conn, *args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def applied_version(conn: Connection, name: str) -> int:
    conn.execute(_BOOKKEEPING)
    row = conn.execute("SELECT version FROM schema_version WHERE schema = ?", (name,)).fetchone()
    return 0 if row is None else int(row[0])


def migrate(conn: Connection, schema: Schema, upto: int | None = None) -> int:
    """
    Apply the steps of C{schema} the database has not seen, up to step
    C{upto} (default: all).  Return the version now applied.
    """
    target = schema.version if upto is None else upto
    current = applied_version(conn, schema.name)
    if current > schema.version:
        raise MigrationError(
            f"schema {schema.name!r} is at version {current}, newer than this relay "
            f"knows ({schema.version}); refusing to run an older relay on it"
        )
    for index in range(current, target):
        step = schema.steps[index]

        def apply(conn: Connection, step: Step = step, index: int = index) -> None:
            if callable(step):
                step(conn)
            else:
                for statement in _statements(step):
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (schema, version) VALUES (?, ?) "
                "ON CONFLICT (schema) DO UPDATE SET version = excluded.version",
                (schema.name, index + 1),
            )

        try:
            transaction(conn, apply)
        except database_errors() as e:
            raise MigrationError(f"schema {schema.name!r} step {index + 1} failed: {e}") from e
    return max(current, target)


def _statements(sql: str) -> list[str]:
    """
    Split a step's SQL into statements (C{sqlite3.complete_statement} knows
    where one ends, so semicolons inside strings are safe).
    """
    statements, pending = [], ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return statements


class Database(Service):
    """
    A SQLite (or PostgreSQL) database used from the reactor thread.

    Migrations run synchronously in the constructor: that happens at
    startup, before the reactor serves anyone.  Afterwards all work goes
    through L{run} on the database's thread.  As a service, it starts its
    thread on C{startService} and waits for queued work on C{stopService};
    add it to the service tree before the services that use it, so that it
    stops after them.

    @ivar path: the SQLite file, or C{None} on PostgreSQL.
    @ivar dialect: C{"sqlite"} or C{"postgresql"}.
    """

    log = Logger()

    def __init__(
        self, reactor: IReactorThreads, path: Path | str, schemas: Sequence[Schema] = ()
    ) -> None:
        self.path: Path | None = None if is_postgresql(path) else Path(path)
        self._reactor = reactor
        self._conn: Connection = open_connection(path if self.path is None else self.path)
        self.dialect = dialect(self._conn)
        for schema in schemas:
            version = migrate(self._conn, schema)
            self.log.debug("schema {schema} at version {version}", schema=schema.name, version=version)
        name = self.path.name if self.path is not None else "postgresql"
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"db:{name}")

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> Deferred[None]:
        if not self.running:
            return succeed(None)  # stopped already: the pool is gone
        super().stopService()

        def stopped(_: object) -> None:
            # The queue is drained (one thread, first in first out), so the
            # join in stop() is immediate.
            self._pool.stop()
            self._conn.close()

        return deferToThreadPool(self._reactor, self._pool, lambda: None).addCallback(stopped)

    def run(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        """
        Run C{work(connection, *args)} in one transaction on the database
        thread; the Deferred fires with its result or fails with its error.
        """
        return deferToThreadPool(self._reactor, self._pool, transaction, self._conn, work, *args)

    def read(self, work: Callable[..., R], *args: Any) -> Deferred[R]:
        """
        Like L{run}, for work that only reads (no transaction is opened).
        """
        return deferToThreadPool(self._reactor, self._pool, work, self._conn, *args)

    def run_now(self, work: Callable[..., R], *args: Any) -> R:
        """
        Run work synchronously, in the calling thread.  Only for startup and
        for tools (the C{relay} command line) that have no reactor running.
        """
        return transaction(self._conn, work, *args)

    def close(self) -> None:
        """
        Close the connection of a database that was never started (tools).
        """
        self._conn.close()
