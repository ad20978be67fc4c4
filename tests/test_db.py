"""
The database layer: migrations (including the upgrade from every earlier
version of every schema relay ships) and work on the database thread.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from relay.cloud.tap import SCHEMAS as CLOUD_SCHEMAS
from relay.db import Database, MigrationError, Schema, applied_version, connect, migrate
from relay.edge.tap import SCHEMAS as EDGE_SCHEMAS

SAMPLE = Schema(
    "sample",
    [
        "CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
        "ALTER TABLE item ADD COLUMN size INTEGER NOT NULL DEFAULT 0;\n"
        "CREATE INDEX item_name ON item (name);",
        lambda conn: conn.execute("UPDATE item SET size = length(name)"),
    ],
)


def dump(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE name != 'schema_version' ORDER BY name"
        )
    ]


def all_schemas() -> list[Schema]:
    return [SAMPLE, *EDGE_SCHEMAS, *CLOUD_SCHEMAS]


@pytest.mark.parametrize("schema", all_schemas(), ids=lambda s: s.name)
def test_upgrade_from_every_earlier_version(tmp_path: Path, schema: Schema) -> None:
    """
    A database left at any earlier version upgrades to the same tables a
    fresh one gets.
    """
    fresh = connect(tmp_path / "fresh.db")
    migrate(fresh, schema)
    expected = dump(fresh)
    for start in range(schema.version):
        conn = connect(tmp_path / f"from-{start}.db")
        migrate(conn, schema, upto=start)
        assert applied_version(conn, schema.name) == start
        assert migrate(conn, schema) == schema.version
        assert dump(conn) == expected


def test_migration_keeps_data(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db")
    migrate(conn, SAMPLE, upto=1)
    conn.execute("INSERT INTO item (name) VALUES ('spool')")
    migrate(conn, SAMPLE)
    assert [tuple(r) for r in conn.execute("SELECT name, size FROM item")] == [("spool", 5)]


def test_migration_is_idempotent(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db")
    migrate(conn, SAMPLE)
    migrate(conn, SAMPLE)
    assert applied_version(conn, "sample") == SAMPLE.version


def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db")
    migrate(conn, SAMPLE)
    older = Schema("sample", SAMPLE.steps[:1])
    with pytest.raises(MigrationError, match="newer than this relay knows"):
        migrate(conn, older)


def test_failed_step_rolls_back(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db")
    broken = Schema("broken", ["CREATE TABLE a (x);", "CREATE TABLE b (y); CREATE TABLE a (z);"])
    with pytest.raises(MigrationError, match="step 2"):
        migrate(conn, broken)
    assert applied_version(conn, "broken") == 1
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "b" not in names


def test_wal_mode(tmp_path: Path) -> None:
    conn = connect(tmp_path / "db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class DatabaseThreadTests(TestCase):
    """
    Work runs on the database's own thread, in a transaction.
    """

    def setUp(self) -> None:
        self.db = Database(reactor, Path(self.mktemp() + ".db"), [SAMPLE])
        self.db.startService()
        self.addCleanup(self.db.stopService)

    async def test_run_commits(self) -> None:
        import threading

        main = threading.get_ident()

        def insert(conn: sqlite3.Connection, name: str) -> int:
            assert threading.get_ident() != main
            return conn.execute("INSERT INTO item (name) VALUES (?)", (name,)).lastrowid

        rowid = await self.db.run(insert, "a")
        rows = await self.db.read(lambda c: c.execute("SELECT id, name FROM item").fetchall())
        self.assertEqual([tuple(r) for r in rows], [(rowid, "a")])

    async def test_run_rolls_back_on_error(self) -> None:
        def fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO item (name) VALUES ('x')")
            raise ValueError("no")

        with self.assertRaises(ValueError):
            await self.db.run(fail)
        count = await self.db.read(lambda c: c.execute("SELECT count(*) FROM item").fetchone()[0])
        self.assertEqual(count, 0)

    async def test_stopping_twice_is_harmless(self) -> None:
        # The cleanup stops it a third time.
        await self.db.stopService()
        stopped_again = self.db.stopService()
        stopped_again.addTimeout(5, reactor)
        await stopped_again
