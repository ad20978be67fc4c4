"""
The message types of the registry and its replicas, as JSON schemas for the
link's catalogue.  C{docs/messages.md} ("Registry, commands and sync")
describes the same types for people.

Edge -> cloud (C{relay.to-cloud}): the commands (C{project.create} ...
C{file.delete}), C{sync.hello} and C{sync.range}.  Cloud -> edge
(C{relay.to-edge.<id>}): C{sync.events} and C{sync.snapshot}.
"""

from __future__ import annotations

from typing import Any

from relay.link.catalogue import Catalogue
from relay.replication import (
    API_KEYS,
    COMMAND_APPLIED,
    COMMAND_REJECTED,
    FILE_KINDS,
    FILES,
    JOB_KINDS,
    JOB_STATES,
    JOBS,
    MEMBERS,
    PROJECTS,
    ROLES,
    TABLES,
    USERS,
    Table,
)

# Commands.
PROJECT_CREATE = "project.create"
PROJECT_RENAME = "project.rename"
PROJECT_DELETE = "project.delete"
MEMBER_ADD = "project.member.add"
MEMBER_REMOVE = "project.member.remove"
MEMBER_ROLE = "project.member.role"
JOB_SUBMIT = "job.submit"
JOB_CANCEL = "job.cancel"
FILE_DELETE = "file.delete"
USER_PASSWORD = "user.password"
KEY_CREATE = "user.key.create"
KEY_REVOKE = "user.key.revoke"
COMMANDS = (
    PROJECT_CREATE, PROJECT_RENAME, PROJECT_DELETE, MEMBER_ADD, MEMBER_REMOVE, MEMBER_ROLE,
    JOB_SUBMIT, JOB_CANCEL, FILE_DELETE, USER_PASSWORD, KEY_CREATE, KEY_REVOKE,
)

# Sync.
HELLO = "sync.hello"
RANGE = "sync.range"
EVENTS = "sync.events"
SNAPSHOT = "sync.snapshot"

#: At most this many events in one C{sync.events} message.
MAX_EVENTS_PER_MESSAGE = 500
#: At most this many rows in one C{sync.snapshot} part.
MAX_ROWS_PER_PART = 500
#: At most this many pending command ids in one C{sync.hello}.
MAX_PENDING_IN_HELLO = 1000

_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_KEY_ID = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
_EDGE = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}
_TIME = {"type": "number"}
_MAYBE_TIME = {"type": ["number", "null"]}
_FLAG = {"type": "integer", "enum": [0, 1]}
_TEXT = {"type": "string", "maxLength": 2000}
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
#: The stored form of an API key's secret (L{relay.credentials.new_api_key}).
_KEY_HASH = {"type": "string", "pattern": "^sha256\\$[0-9a-f]{64}$"}
#: The stored form of a password (L{relay.credentials.hash_password}).
_PASSWORD_HASH = {
    "type": "string", "maxLength": 200,
    "pattern": r"^\$scrypt\$ln=[0-9]{1,2},r=[0-9]{1,2},p=[0-9]{1,2}\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$",
}
_SEQ = {"type": "integer", "minimum": 0}


def _object(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


ROWS: dict[str, dict[str, Any]] = {
    USERS.name: _object({
        "id": _ID, "name": _NAME, "password_hash": {"type": "string", "maxLength": 200},
        "is_admin": _FLAG, "disabled": _FLAG, "must_change_password": _FLAG,
        "created_at": _TIME, "updated_at": _TIME,
    }),
    API_KEYS.name: _object({
        "id": _KEY_ID, "user_id": _ID, "key_hash": {"type": "string", "maxLength": 200},
        "label": _TEXT, "created_at": _TIME, "revoked_at": _MAYBE_TIME,
    }),
    PROJECTS.name: _object({
        "id": _ID, "name": _NAME, "description": _TEXT, "owner_id": _ID, "is_default": _FLAG,
        "created_at": _TIME, "updated_at": _TIME,
    }),
    MEMBERS.name: _object({"project_id": _ID, "user_id": _ID, "role": {"enum": list(ROLES)}}),
    FILES.name: _object({
        "id": _ID, "project_id": _ID, "name": {"type": "string", "minLength": 1, "maxLength": 1000},
        "size": {"type": "integer", "minimum": 0},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        "object_key": {"type": ["string", "null"], "maxLength": 1024},
        "state": {"type": "string", "maxLength": 40},
        "created_at": _TIME, "updated_at": _TIME,
        "kind": {"enum": list(FILE_KINDS)}, "job_id": {"type": ["string", "null"], "pattern": "^[0-9a-f]{32}$"},
    }),
    JOBS.name: _object({
        "id": _ID, "project_id": _ID, "kind": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
        "parameters": {"type": "object"}, "inputs": {"type": "array", "items": _ID, "maxItems": 1000},
        "state": {"enum": list(JOB_STATES)}, "progress": {"type": "number", "minimum": 0, "maximum": 1},
        "submitted_by": _ID, "created_at": _TIME, "started_at": _MAYBE_TIME,
        "finished_at": _MAYBE_TIME, "result_files": {"type": "array", "items": _ID},
        "error": {"type": ["string", "null"], "maxLength": 4000},
        "attempts": {"type": "integer", "minimum": 0},
    }),
    JOB_KINDS.name: _object({
        "name": {"type": "string", "pattern": "^[a-z][a-z0-9_-]{0,62}$"}, "description": _TEXT,
        "parameters": {"type": "object"},
        "arguments": {"type": "array", "items": {"type": "string", "maxLength": 100}, "maxItems": 100},
        "min_inputs": {"type": "integer", "minimum": 0, "maximum": 1000},
        "max_inputs": {"type": "integer", "minimum": 0, "maximum": 1000},
        "timeout": {"type": "number", "exclusiveMinimum": 0},
    }),
}


def _key_schema(table: Table) -> dict[str, Any]:
    row = ROWS[table.name]["properties"]
    return _object({column: row[column] for column in table.key})


_OUTCOME_DATA = {
    COMMAND_APPLIED: _object({"command_id": _ID, "edge": _EDGE}),
    COMMAND_REJECTED: _object({
        "command_id": _ID, "edge": _EDGE, "reason": _TEXT, "code": {"type": "string", "maxLength": 40},
    }),
}


def event_data_schemas() -> dict[str, dict[str, Any]]:
    """
    The schema of each event kind's C{data}.
    """
    data_by_kind: dict[str, dict[str, Any]] = dict(_OUTCOME_DATA)
    for table in TABLES:
        data_by_kind[f"{table.kind}.put"] = ROWS[table.name]
        data_by_kind[f"{table.kind}.delete"] = _key_schema(table)
    return data_by_kind


def event_schema() -> dict[str, Any]:
    """
    One event of the log, as it travels in C{sync.events}.
    """
    data_by_kind = event_data_schemas()
    return {
        **_object(
            {
                "seq": {"type": "integer", "minimum": 1},
                "kind": {"enum": sorted(data_by_kind)},
                "data": {"type": "object"},
                "command_id": {"type": ["string", "null"]},
            },
            optional=("command_id",),
        ),
        "allOf": [
            {
                "if": {"properties": {"kind": {"const": kind}}},
                "then": {"properties": {"data": schema}},
            }
            for kind, schema in sorted(data_by_kind.items())
        ],
    }


_ACTOR = _object(
    {"user_id": _ID, "via": {"enum": ["session", "key"]}, "key_id": _KEY_ID}, optional=("key_id",)
)


def _command(**fields: Any) -> dict[str, Any]:
    return _object({"command_id": _ID, "actor": _ACTOR, **fields})


SCHEMAS: dict[str, tuple[dict[str, Any], str]] = {
    PROJECT_CREATE: (
        _command(project_id=_ID, name=_NAME, description=_TEXT),
        "edge -> cloud: create a project owned by the actor",
    ),
    PROJECT_RENAME: (_command(project_id=_ID, name=_NAME), "edge -> cloud: rename a project"),
    PROJECT_DELETE: (_command(project_id=_ID), "edge -> cloud: delete a project with its files and jobs"),
    MEMBER_ADD: (
        _command(project_id=_ID, user_id=_ID, role={"enum": ["member", "viewer"]}),
        "edge -> cloud: add a member (or change a member's role)",
    ),
    MEMBER_REMOVE: (_command(project_id=_ID, user_id=_ID), "edge -> cloud: remove a member"),
    MEMBER_ROLE: (
        _command(project_id=_ID, user_id=_ID, role={"enum": list(ROLES)}),
        "edge -> cloud: give a member another role ('owner' hands the project over)",
    ),
    JOB_SUBMIT: (
        _command(
            project_id=_ID, job_id=_ID, kind=ROWS[JOBS.name]["properties"]["kind"],
            parameters={"type": "object"}, inputs={"type": "array", "items": _ID, "maxItems": 1000},
        ),
        "edge -> cloud: queue a job",
    ),
    JOB_CANCEL: (_command(job_id=_ID), "edge -> cloud: cancel a queued or running job"),
    FILE_DELETE: (_command(file_id=_ID), "edge -> cloud: delete a file"),
    USER_PASSWORD: (
        _command(password_hash=_PASSWORD_HASH, replaces=_SHA256),
        "edge -> cloud: the actor's new password (its scrypt hash, made at the edge), "
        "replacing the one whose hash has the sha256 'replaces'",
    ),
    KEY_CREATE: (
        _command(key_id=_KEY_ID, key_hash=_KEY_HASH, name=_NAME),
        "edge -> cloud: a new API key of the actor's, made at the edge: its id, name and the hash of "
        "its secret (the secret itself never leaves the edge's answer to its user)",
    ),
    KEY_REVOKE: (_command(key_id=_KEY_ID), "edge -> cloud: revoke one of the actor's API keys"),
    HELLO: (
        _object({
            "edge": _EDGE, "applied": _SEQ,
            "pending": {"type": "array", "items": _ID, "maxItems": MAX_PENDING_IN_HELLO},
            "snapshot": {"type": "boolean"},
        }),
        "edge -> cloud: (re)started; bring me up to date from 'applied'",
    ),
    RANGE: (
        _object({"edge": _EDGE, "after": _SEQ, "upto": _SEQ}),
        "edge -> cloud: send the events after 'after' up to 'upto'",
    ),
    EVENTS: (
        _object({
            "events": {"type": "array", "items": event_schema(), "minItems": 1,
                       "maxItems": MAX_EVENTS_PER_MESSAGE},
            "head": _SEQ,
        }),
        "cloud -> edge: consecutive events of the registry's log",
    ),
    SNAPSHOT: (
        _object({
            "snapshot_id": _ID,
            "part": {"type": "integer", "minimum": 1},
            "parts": {"type": "integer", "minimum": 1},
            "upto": _SEQ,
            "reset": {"type": "boolean"},
            "tables": _object(
                {name: {"type": "array", "items": row} for name, row in ROWS.items()},
                optional=tuple(ROWS),
            ),
            "outcomes": {
                "type": "array",
                "items": _object({
                    "command_id": _ID, "status": {"enum": ["applied", "rejected"]},
                    "reason": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]},
                }),
            },
        }),
        "cloud -> edge: one part of a consistent copy of the registry at log position 'upto'",
    ),
}


def register_types(catalogue: Catalogue) -> None:
    """
    Add the registry's and sync's message types to a catalogue (both sides
    register all of them: each validates what it receives).
    """
    catalogue.register_all(SCHEMAS)


def sync_catalogue() -> Catalogue:
    """
    A new catalogue with the registry's and sync's message types, for a
    process's link (L{relay.link.bridge.build_link}); its components add
    theirs.
    """
    catalogue = Catalogue()
    register_types(catalogue)
    return catalogue
