"""
C{relay dead-letters}: list, replay and drop, on the database file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from relay.cli import main
from relay.db import connect, migrate, transaction
from relay.link import deadletters, inbox


def bury(path: Path, count: int) -> None:
    conn = connect(path)
    migrate(conn, inbox.SCHEMA)
    for n in range(count):
        transaction(
            conn,
            lambda c, n=n: deadletters.bury(c, f"m{n}", "job.submit", "relay.to-cloud", f"reason {n}", b"{}", None, 1.0),
        )
    conn.close()


def test_list_replay_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cloud.db"
    bury(db, 3)
    assert main(["dead-letters", "list", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["reason"] for r in rows] == ["reason 0", "reason 1", "reason 2"]
    assert main(["dead-letters", "replay", "1", "--db", str(db)]) == 0
    assert "1 of 1 dead letters marked for replay" in capsys.readouterr().out
    assert main(["dead-letters", "drop", "2", "3", "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["dead-letters", "drop", "2", "--db", str(db)]) == 1
    capsys.readouterr()
    states = dict(sqlite3.connect(db).execute("SELECT number, state FROM dead_letter").fetchall())
    assert states == {1: "replay", 2: "dropped", 3: "dropped"}
    assert main(["dead-letters", "list", "--db", str(db)]) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_missing_database(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no database"):
        main(["dead-letters", "list", "--db", str(tmp_path / "absent.db")])


def test_config_finds_the_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "data").mkdir()
    bury(tmp_path / "data" / "edge.db", 1)
    config = tmp_path / "edge.toml"
    config.write_text(f'[edge]\ndata_dir = "{tmp_path / "data"}"\n')
    assert main(["dead-letters", "list", "--side", "edge", "--config", str(config)]) == 0
    assert "reason 0" in capsys.readouterr().out
