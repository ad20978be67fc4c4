"""
The edge's replica tables (the registry's columns, prefixed C{replica_},
without the registry's constraints: the replica mirrors, it does not
decide), the sync position, and the edge's own commands awaiting their
answer.
"""

from __future__ import annotations

from relay.db import Schema

SCHEMA = Schema(
    "replica",
    [
        """
        CREATE TABLE replica_users (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            is_admin INTEGER NOT NULL,
            disabled INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX replica_users_name ON replica_users (name);
        CREATE TABLE replica_api_keys (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            label TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION
        );
        CREATE TABLE replica_projects (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            description TEXT NOT NULL,
            owner_id TEXT NOT NULL,
            is_default INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX replica_projects_owner ON replica_projects (owner_id);
        CREATE TABLE replica_members (
            project_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            role TEXT NOT NULL,
            PRIMARY KEY (project_id, user_id)
        );
        CREATE INDEX replica_members_user ON replica_members (user_id);
        CREATE TABLE replica_files (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL,
            name TEXT NOT NULL,
            size BIGINT NOT NULL,
            sha256 TEXT,
            object_key TEXT,
            state TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX replica_files_project ON replica_files (project_id);
        CREATE TABLE replica_jobs (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            parameters TEXT NOT NULL,
            inputs TEXT NOT NULL,
            state TEXT NOT NULL,
            progress DOUBLE PRECISION NOT NULL,
            submitted_by TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            result_files TEXT NOT NULL,
            error TEXT
        );
        CREATE INDEX replica_jobs_project ON replica_jobs (project_id);
        CREATE TABLE replica_sync (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            applied BIGINT NOT NULL DEFAULT 0,
            head BIGINT NOT NULL DEFAULT 0,
            synced INTEGER NOT NULL DEFAULT 0,
            requested_upto BIGINT NOT NULL DEFAULT 0,
            requested_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            hello_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            progress_at DOUBLE PRECISION NOT NULL DEFAULT 0
        );
        INSERT INTO replica_sync (id) VALUES (1);
        CREATE TABLE replica_buffer (
            seq BIGINT PRIMARY KEY,
            kind TEXT NOT NULL,
            data TEXT NOT NULL,
            command_id TEXT
        );
        CREATE TABLE replica_snapshot_parts (
            snapshot_id TEXT NOT NULL,
            part INTEGER NOT NULL,
            parts INTEGER NOT NULL,
            upto BIGINT NOT NULL,
            reset INTEGER NOT NULL,
            payload TEXT NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (snapshot_id, part)
        );
        CREATE TABLE pending_commands (
            command_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            type TEXT NOT NULL,
            body TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'rejected')),
            reason TEXT,
            code TEXT
        );
        CREATE INDEX pending_commands_user ON pending_commands (user_id, state);
        """,
        """
        ALTER TABLE replica_users ADD COLUMN must_change_password INTEGER NOT NULL DEFAULT 0;
        """,
        # The registry's step 3: attempts of a job, the kind of a file.
        """
        ALTER TABLE replica_jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE replica_files ADD COLUMN kind TEXT NOT NULL DEFAULT 'upload';
        ALTER TABLE replica_files ADD COLUMN job_id TEXT;
        """,
        # The catalogue of job kinds (L{relay.edge.replica.kinds}).
        """
        CREATE TABLE replica_job_kinds (
            name TEXT PRIMARY KEY,
            description TEXT NOT NULL,
            parameters TEXT NOT NULL,
            arguments TEXT NOT NULL,
            min_inputs INTEGER NOT NULL,
            max_inputs INTEGER NOT NULL,
            timeout DOUBLE PRECISION NOT NULL
        );
        """,
        # The registry's step 5: who uploaded a file.
        """
        ALTER TABLE replica_files ADD COLUMN uploaded_by TEXT;
        """,
        # The outbox message that carries a pending command (is it sent?).
        """
        ALTER TABLE pending_commands ADD COLUMN message_id TEXT;
        """,
    ],
)
