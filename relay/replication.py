"""
What the registry (cloud) and its replicas (edges) share: the replicated
tables, the event kinds that change them, and the seams to the outbox and
the inbox.

The registry's tables and each edge's replica tables have the same columns
(the replica's are prefixed C{replica_}).  A change to a row travels as an
event C{<kind>.put} carrying the whole row, or C{<kind>.delete} carrying its
key, so applying an event twice, or applying it to a replica that already
has the row, leaves the same state.  The message types that carry events and
commands are in L{relay.sync_messages}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.link.inbox import IInbox
from relay.link.outbox import IOutbox

__all__ = ["IInbox", "IOutbox"]


@dataclass(frozen=True)
class Table:
    """
    One replicated table.

    @ivar kind: the event prefix (C{user} -> C{user.put}, C{user.delete}).
    @ivar json_columns: stored as JSON text, sent as JSON values.
    """

    name: str
    kind: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    json_columns: frozenset[str] = frozenset()

    def to_wire(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """
        A database row as an event's data (JSON columns decoded).
        """
        return {
            column: json.loads(row[column]) if column in self.json_columns else row[column]
            for column in self.columns
        }

    def to_params(self, data: Mapping[str, Any]) -> tuple[Any, ...]:
        """
        An event's data as parameters for the columns, in order.
        """
        return tuple(
            encode_json(data[column]) if column in self.json_columns else data[column]
            for column in self.columns
        )

    def key_of(self, data: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(data[column] for column in self.key)


def encode_json(value: Any) -> str:
    """
    The one JSON spelling relay stores (stable, so dumps compare equal).
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


USERS = Table(
    "users", "user",
    ("id", "name", "password_hash", "is_admin", "disabled", "must_change_password", "created_at",
     "updated_at"),
    ("id",),
)
API_KEYS = Table(
    "api_keys", "key",
    ("id", "user_id", "key_hash", "label", "created_at", "revoked_at"),
    ("id",),
)
PROJECTS = Table(
    "projects", "project",
    ("id", "name", "description", "owner_id", "is_default", "created_at", "updated_at"),
    ("id",),
)
MEMBERS = Table("members", "member", ("project_id", "user_id", "role"), ("project_id", "user_id"))
FILES = Table(
    "files", "file",
    ("id", "project_id", "name", "size", "sha256", "object_key", "state", "created_at", "updated_at",
     "kind", "job_id", "uploaded_by"),
    ("id",),
)
JOBS = Table(
    "jobs", "job",
    (
        "id", "project_id", "kind", "parameters", "inputs", "state", "progress", "submitted_by",
        "created_at", "started_at", "finished_at", "result_files", "error", "attempts",
    ),
    ("id",),
    frozenset({"parameters", "inputs", "result_files"}),
)

#: The catalogue of job kinds (L{relay.jobkinds.CatalogueEntry}), from
#: the cloud's configuration: what the edges check job requests against.
JOB_KINDS = Table(
    "job_kinds", "job_kind",
    ("name", "description", "parameters", "arguments", "min_inputs", "max_inputs", "timeout"),
    ("name",),
    frozenset({"parameters", "arguments"}),
)

#: In dependency order: a row's references come before it.
TABLES: tuple[Table, ...] = (USERS, API_KEYS, PROJECTS, MEMBERS, FILES, JOBS, JOB_KINDS)
BY_KIND: dict[str, Table] = {table.kind: table for table in TABLES}

#: Events that are not row changes: the answer to an edge's command.
COMMAND_APPLIED = "command.applied"
COMMAND_REJECTED = "command.rejected"

#: Every event kind.
EVENT_KINDS: tuple[str, ...] = (
    *(f"{t.kind}.{op}" for t in TABLES for op in ("put", "delete")),
    COMMAND_APPLIED,
    COMMAND_REJECTED,
)

#: Job states; the last four are final.
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")
FINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
#: What a project file is: uploaded by someone, or made by a job.
FILE_KINDS = ("upload", "result")
ROLES = ("owner", "member", "viewer")


def dump(conn: Any, prefix: str = "") -> dict[str, list[dict[str, Any]]]:
    """
    Every replicated row, in a canonical order: the registry's
    (C{prefix=""}) and a replica's (C{prefix="replica_"}) compare equal when
    the replica has converged.
    """
    result = {}
    for table in TABLES:
        order = ", ".join(table.key)
        rows = conn.execute(
            f"SELECT {', '.join(table.columns)} FROM {prefix}{table.name} ORDER BY {order}"
        ).fetchall()
        result[table.name] = [table.to_wire(row) for row in rows]
    return result
