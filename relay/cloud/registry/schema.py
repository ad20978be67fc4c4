"""
The registry's tables.  Portable SQL: the same steps run on SQLite and on
PostgreSQL (L{relay.db}); steps are never edited once released.
"""

from __future__ import annotations

import json
from typing import Any

from relay.db import Schema, dialect

_JOB_STATES_V3 = "('queued', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')"


def _timed_out_attempts_file_kinds(conn: Any) -> None:
    """
    Step 3.  SQLite cannot change a CHECK constraint: the jobs table is
    rebuilt (nothing refers to it); PostgreSQL alters it.
    """
    if dialect(conn) == "sqlite":
        conn.execute(
            f"""
            CREATE TABLE jobs_v3 (
                id TEXT PRIMARY KEY,
                project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
                kind TEXT NOT NULL,
                parameters TEXT NOT NULL,
                inputs TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN {_JOB_STATES_V3}),
                progress DOUBLE PRECISION NOT NULL DEFAULT 0,
                submitted_by TEXT NOT NULL REFERENCES users (id),
                created_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                result_files TEXT NOT NULL DEFAULT '[]',
                error TEXT
            )
            """
        )
        conn.execute("INSERT INTO jobs_v3 SELECT * FROM jobs")
        conn.execute("DROP TABLE jobs")
        conn.execute("ALTER TABLE jobs_v3 RENAME TO jobs")
        conn.execute("CREATE INDEX jobs_project ON jobs (project_id)")
    else:
        conn.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_state_check")
        conn.execute(f"ALTER TABLE jobs ADD CONSTRAINT jobs_state_check CHECK (state IN {_JOB_STATES_V3})")
    conn.execute("ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        "ALTER TABLE files ADD COLUMN kind TEXT NOT NULL DEFAULT 'upload' CHECK (kind IN ('upload', 'result'))"
    )
    conn.execute("ALTER TABLE files ADD COLUMN job_id TEXT")
    # Results of jobs that finished before: their files say so now.
    for job_id, result_files in conn.execute("SELECT id, result_files FROM jobs").fetchall():
        for file_id in json.loads(result_files):
            conn.execute("UPDATE files SET kind = 'result', job_id = ? WHERE id = ?", (job_id, file_id))
    conn.execute("UPDATE jobs SET attempts = 1 WHERE started_at IS NOT NULL OR finished_at IS NOT NULL")


SCHEMA = Schema(
    "registry",
    [
        """
        CREATE TABLE users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            is_admin INTEGER NOT NULL DEFAULT 0,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id),
            key_hash TEXT NOT NULL,
            label TEXT NOT NULL DEFAULT '',
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        );
        CREATE INDEX api_keys_user ON api_keys (user_id);
        CREATE TABLE projects (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            owner_id TEXT NOT NULL REFERENCES users (id),
            is_default INTEGER NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE UNIQUE INDEX projects_owner_name ON projects (owner_id, name);
        CREATE TABLE members (
            project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
            user_id TEXT NOT NULL REFERENCES users (id),
            role TEXT NOT NULL CHECK (role IN ('owner', 'member', 'viewer')),
            PRIMARY KEY (project_id, user_id)
        );
        CREATE INDEX members_user ON members (user_id);
        CREATE TABLE files (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            size BIGINT NOT NULL,
            sha256 TEXT,
            object_key TEXT,
            state TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX files_project ON files (project_id);
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            parameters TEXT NOT NULL,
            inputs TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
            progress DOUBLE PRECISION NOT NULL DEFAULT 0,
            submitted_by TEXT NOT NULL REFERENCES users (id),
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            result_files TEXT NOT NULL DEFAULT '[]',
            error TEXT
        );
        CREATE INDEX jobs_project ON jobs (project_id);
        CREATE TABLE commands (
            command_id TEXT PRIMARY KEY,
            edge TEXT NOT NULL,
            type TEXT NOT NULL,
            user_id TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('applied', 'rejected')),
            reason TEXT,
            code TEXT,
            seq BIGINT NOT NULL,
            decided_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX commands_edge ON commands (edge, seq);
        """,
        # A password someone else chose (the first admin's, a generated
        # one) must be changed before anything else.
        """
        ALTER TABLE users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
        """,
        # timed_out is an outcome of its own; a job counts its attempts; a
        # file says whether it was uploaded or made by a job.
        _timed_out_attempts_file_kinds,
        # The catalogue of job kinds, kept equal to the configuration's
        # kinds by L{relay.cloud.jobs.catalogue}; replicated to the edges.
        """
        CREATE TABLE job_kinds (
            name TEXT PRIMARY KEY,
            description TEXT NOT NULL,
            parameters TEXT NOT NULL,
            arguments TEXT NOT NULL,
            min_inputs INTEGER NOT NULL,
            max_inputs INTEGER NOT NULL,
            timeout DOUBLE PRECISION NOT NULL
        );
        """,
        # Who uploaded a file; a job's result counts as its submitter's.
        # Files from before this step have none.
        """
        ALTER TABLE files ADD COLUMN uploaded_by TEXT;
        UPDATE files SET uploaded_by = (SELECT submitted_by FROM jobs WHERE jobs.id = files.job_id)
            WHERE job_id IS NOT NULL;
        """,
    ],
)
