"""
The registry's step 3 on a SQLite database that has data: timed_out
becomes a state the CHECK allows (the jobs table rebuilt, its constraints
and index kept), jobs that ran count one attempt, and the result files of
jobs that finished before say so.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from relay.cloud.registry.schema import SCHEMA
from relay.db import connect, migrate

A, B, C, D, J, K = ("a" * 32, "b" * 32, "c" * 32, "d" * 32, "e" * 32, "f" * 32)


def test_step_3_keeps_the_data(tmp_path: Path) -> None:
    conn = connect(tmp_path / "cloud.db")
    migrate(conn, SCHEMA, upto=2)
    conn.execute("INSERT INTO users (id, name, password_hash, created_at, updated_at) VALUES (?, 'u', 'h', 0, 0)", (A,))
    conn.execute(
        "INSERT INTO projects (id, name, owner_id, created_at, updated_at) VALUES (?, 'p', ?, 0, 0)", (B, A)
    )
    for file_id in (C, D):
        conn.execute(
            "INSERT INTO files (id, project_id, name, size, state, created_at, updated_at) "
            "VALUES (?, ?, 'f', 1, 'stored', 0, 0)",
            (file_id, B),
        )
    conn.execute(
        "INSERT INTO jobs (id, project_id, kind, parameters, inputs, state, submitted_by, created_at, started_at, "
        "finished_at, result_files) VALUES (?, ?, 'k', '{}', ?, 'succeeded', ?, 0, 1, 2, ?)",
        (J, B, f'["{C}"]', A, f'["{D}"]'),
    )
    conn.execute(
        "INSERT INTO jobs (id, project_id, kind, parameters, inputs, state, submitted_by, created_at) "
        "VALUES (?, ?, 'k', '{}', '[]', 'queued', ?, 0)",
        (K, B, A),
    )
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE jobs SET state = 'timed_out' WHERE id = ?", (K,))
    assert migrate(conn, SCHEMA) == len(SCHEMA.steps)  # step 3 and the later ones

    rows = {r["id"]: (r["state"], r["attempts"]) for r in conn.execute("SELECT * FROM jobs")}
    assert rows == {J: ("succeeded", 1), K: ("queued", 0)}
    files = {r["id"]: (r["kind"], r["job_id"]) for r in conn.execute("SELECT * FROM files")}
    assert files == {C: ("upload", None), D: ("result", J)}
    conn.execute("UPDATE jobs SET state = 'timed_out' WHERE id = ?", (K,))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE jobs SET state = 'lost' WHERE id = ?", (K,))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE files SET kind = 'other' WHERE id = ?", (C,))
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO jobs (id, project_id, kind, parameters, inputs, state, submitted_by, created_at) "
            "VALUES (?, ?, 'k', '{}', '[]', 'queued', ?, 0)",
            ("0" * 32, "9" * 32, A),
        )  # its project's foreign key is kept
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'jobs_project'").fetchone() is not None
    conn.execute("DELETE FROM projects WHERE id = ?", (B,))
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0, "ON DELETE CASCADE kept"


def test_step_5_says_who_made_the_results_of_earlier_jobs(tmp_path: Path) -> None:
    conn = connect(tmp_path / "cloud.db")
    migrate(conn, SCHEMA, upto=4)
    conn.execute("INSERT INTO users (id, name, password_hash, created_at, updated_at) VALUES (?, 'u', 'h', 0, 0)", (A,))
    conn.execute(
        "INSERT INTO projects (id, name, owner_id, created_at, updated_at) VALUES (?, 'p', ?, 0, 0)", (B, A)
    )
    conn.execute(
        "INSERT INTO jobs (id, project_id, kind, parameters, inputs, state, submitted_by, created_at, result_files) "
        "VALUES (?, ?, 'k', '{}', '[]', 'succeeded', ?, 0, ?)",
        (J, B, A, f'["{D}"]'),
    )
    conn.execute("INSERT INTO files (id, project_id, name, size, state, created_at, updated_at) "
                 "VALUES (?, ?, 'in', 1, 'stored', 0, 0)", (C, B))
    conn.execute("INSERT INTO files (id, project_id, name, size, state, created_at, updated_at, kind, job_id) "
                 "VALUES (?, ?, 'out', 1, 'stored', 0, 0, 'result', ?)", (D, B, J))
    assert migrate(conn, SCHEMA) == len(SCHEMA.steps)
    uploaders = {r["id"]: r["uploaded_by"] for r in conn.execute("SELECT id, uploaded_by FROM files")}
    assert uploaders == {C: None, D: A}, "an earlier upload has nobody; a result, its job's submitter"
