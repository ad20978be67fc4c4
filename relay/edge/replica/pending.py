"""
The edge's own commands: sent to the cloud, shown at once as pending.

L{CommandIssuer.issue} runs in one transaction: it checks the command
against the replica (the same rules the cloud applies, so most refusals are
immediate), records it in C{pending_commands} and puts it in the outbox.
The replica tables themselves only ever hold what the cloud said; the
pending commands are an overlay that the views below merge in, marked
C{pending}.  The cloud's answer (C{command.applied} after the changes it
caused, or C{command.rejected} with a reason) reconciles: an applied command
disappears from the overlay, a rejected one stays as a notice for its user
until dismissed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from relay.edge.auth import Principal
from relay.edge.replica.kinds import check_job
from relay.jobkinds import BadRequest
from relay.link.envelope import TO_CLOUD
from relay.permissions import Access, Refused, allowed
from relay.replication import IOutbox
from relay.sync_messages import (
    COMMANDS,
    FILE_DELETE,
    JOB_CANCEL,
    JOB_SUBMIT,
    KEY_CREATE,
    KEY_REVOKE,
    MEMBER_ADD,
    MEMBER_REMOVE,
    MEMBER_ROLE,
    PROJECT_CREATE,
    PROJECT_DELETE,
    PROJECT_RENAME,
    USER_PASSWORD,
)

_ACTION = {
    PROJECT_RENAME: "project.rename",
    PROJECT_DELETE: "project.delete",
    MEMBER_ADD: "member.manage",
    MEMBER_ROLE: "member.manage",
    JOB_SUBMIT: "job.submit",
}

#: Fields each command needs from the caller (ids of new things are made
#: here when not given).
FIELDS: dict[str, tuple[str, ...]] = {
    PROJECT_CREATE: ("project_id", "name", "description"),
    PROJECT_RENAME: ("project_id", "name"),
    PROJECT_DELETE: ("project_id",),
    MEMBER_ADD: ("project_id", "user_id", "role"),
    MEMBER_REMOVE: ("project_id", "user_id"),
    MEMBER_ROLE: ("project_id", "user_id", "role"),
    JOB_SUBMIT: ("project_id", "job_id", "kind", "parameters", "inputs"),
    JOB_CANCEL: ("job_id",),
    FILE_DELETE: ("file_id",),
    USER_PASSWORD: ("password_hash", "replaces"),
    KEY_CREATE: ("key_id", "key_hash", "name"),
    KEY_REVOKE: ("key_id",),
}


def actor_of(principal: Principal) -> dict[str, Any]:
    actor: dict[str, Any] = {"user_id": principal.user_id, "via": principal.via}
    if principal.via == "key" and principal.key_id is not None:
        actor["key_id"] = principal.key_id
    return actor


class CommandIssuer:
    """
    Sends this edge's commands to the cloud, optimistically.
    """

    def __init__(self, outbox: IOutbox, clock: IReactorTime) -> None:
        self._outbox = outbox
        self._clock = clock
        self._access = Access("replica_")

    def issue(self, conn: Any, principal: Principal, type: str, fields: Mapping[str, Any]) -> str:
        """
        Check, record and send one command (in the caller's transaction);
        return its id.  Call the outbox's C{wake} after the commit.

        @raise Refused: the replica already says the cloud would refuse.
        """
        if type not in COMMANDS:
            raise ValueError(f"not a command: {type!r}")
        values = dict(fields)
        values.setdefault("description", "")
        values.setdefault("parameters", {})
        values.setdefault("inputs", [])
        for generated in ("project_id", "job_id"):
            if generated in FIELDS[type] and generated not in values:
                values[generated] = uuid.uuid4().hex
        missing = [name for name in FIELDS[type] if name not in values]
        if missing:
            raise ValueError(f"{type} needs {', '.join(missing)}")
        actor = actor_of(principal)
        self._check(conn, actor, type, values)
        command_id = uuid.uuid4().hex
        body = {"command_id": command_id, "actor": actor, **{k: values[k] for k in FIELDS[type]}}
        self._outbox.put(conn, type, body, to=TO_CLOUD)
        conn.execute(
            "INSERT INTO pending_commands (command_id, user_id, type, body, created_at) VALUES (?, ?, ?, ?, ?)",
            (command_id, principal.user_id, type, json.dumps(body), self._clock.seconds()),
        )
        return command_id

    def _check(self, conn: Any, actor: dict[str, Any], type: str, values: dict[str, Any]) -> None:
        self._access.actor(conn, actor)
        user_id = actor["user_id"]
        project_id: str = values.get("project_id", "")
        if project_id and _pending_create(conn, user_id, project_id):
            if type == JOB_SUBMIT:
                _check_job(conn, values)
            return  # the project exists only here yet: the cloud decides
        if type in _ACTION:
            self._access.require(conn, user_id, project_id, _ACTION[type])
            if type == MEMBER_ROLE:
                self._access.check_role_change(conn, project_id, values["user_id"], values["role"])
            if type == PROJECT_DELETE and _is_default(conn, project_id):
                raise Refused("a user's default project cannot be deleted", "conflict")
            if type == JOB_SUBMIT:
                _check_job(conn, values)
        elif type == MEMBER_REMOVE:
            role = self._access.role(conn, project_id, user_id)
            if not (values["user_id"] == user_id and role in ("member", "viewer")):
                self._access.require(conn, user_id, project_id, "member.manage")
        elif type == JOB_CANCEL:
            job = conn.execute(
                "SELECT project_id, submitted_by FROM replica_jobs WHERE id = ?", (values["job_id"],)
            ).fetchone()
            if job is None or self._access.role(conn, job["project_id"], user_id) is None:
                raise Refused("no such job", "not_found")
            role = self._access.require(conn, user_id, job["project_id"], "job.cancel")
            if job["submitted_by"] != user_id and not allowed(role, "job.cancel.others"):
                raise Refused("only the project's owner may cancel other people's jobs", "forbidden")
        elif type == KEY_CREATE:
            if conn.execute("SELECT 1 FROM replica_api_keys WHERE id = ?", (values["key_id"],)).fetchone():
                raise Refused("an API key with this id exists already", "conflict")
        elif type == KEY_REVOKE:
            key = _one_key(keys_for(conn, user_id), values["key_id"])
            if key is None:
                raise Refused("no such API key", "not_found")
            if key["pending"] == "revoke":
                raise Refused("this API key is being revoked already", "conflict")
        elif type == FILE_DELETE:
            file = conn.execute("SELECT project_id FROM replica_files WHERE id = ?", (values["file_id"],)).fetchone()
            if file is None or self._access.role(conn, file["project_id"], user_id) is None:
                raise Refused("no such file", "not_found")
            self._access.require(conn, user_id, file["project_id"], "file.delete")


def _check_job(conn: Any, values: dict[str, Any]) -> None:
    try:
        check_job(conn, values["project_id"], values["kind"], values["parameters"], values["inputs"])
    except BadRequest as e:
        raise Refused(str(e), e.code) from None


def _pending_create(conn: Any, user_id: str, project_id: str) -> bool:
    for (body,) in conn.execute(
        "SELECT body FROM pending_commands WHERE user_id = ? AND type = ? AND state = 'pending'",
        (user_id, PROJECT_CREATE),
    ):
        if json.loads(body)["project_id"] == project_id:
            return True
    return False


def _pending(conn: Any, user_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (row[0], json.loads(row[1]))
        for row in conn.execute(
            "SELECT type, body FROM pending_commands WHERE user_id = ? AND state = 'pending' ORDER BY created_at",
            (user_id,),
        )
    ]


def projects_for(conn: Any, user_id: str) -> list[dict[str, Any]]:
    """
    The user's projects as the edge knows them: the replica's, with the
    user's own commands still in flight merged in (C{pending} says which:
    C{"create"}, C{"rename"}, C{"delete"}; C{None} for settled).
    """
    projects = {
        row["id"]: {**dict(row), "pending": None}
        for row in conn.execute(
            "SELECT p.id, p.name, p.description, p.owner_id, p.is_default, m.role "
            "FROM replica_projects p JOIN replica_members m ON m.project_id = p.id AND m.user_id = ? "
            "ORDER BY p.name",
            (user_id,),
        )
    }
    for type, body in _pending(conn, user_id):
        project = projects.get(body.get("project_id", ""))
        if type == PROJECT_CREATE and project is None:
            projects[body["project_id"]] = {
                "id": body["project_id"], "name": body["name"], "description": body["description"],
                "owner_id": user_id, "is_default": 0, "role": "owner", "pending": "create",
            }
        elif type == PROJECT_RENAME and project is not None:
            project.update(name=body["name"], pending="rename")
        elif type == PROJECT_DELETE and project is not None:
            project["pending"] = "delete"
    return sorted(projects.values(), key=lambda p: (p["name"], p["id"]))


def jobs_for(conn: Any, user_id: str, project_id: str) -> list[dict[str, Any]]:
    """
    A project's jobs, if the user may see the project, with the user's own
    submissions and cancellations in flight (C{pending}: C{"submit"},
    C{"cancel"}).
    """
    if Access("replica_").role(conn, project_id, user_id) is None and not _pending_create(conn, user_id, project_id):
        return []
    jobs = {
        row["id"]: {**dict(row), "pending": None}
        for row in conn.execute(
            "SELECT id, kind, state, progress, submitted_by, created_at FROM replica_jobs "
            "WHERE project_id = ? ORDER BY created_at",
            (project_id,),
        )
    }
    for type, body in _pending(conn, user_id):
        if type == JOB_SUBMIT and body["project_id"] == project_id and body["job_id"] not in jobs:
            jobs[body["job_id"]] = {
                "id": body["job_id"], "kind": body["kind"], "state": "queued", "progress": 0.0,
                "submitted_by": user_id, "created_at": None, "pending": "submit",
            }
        elif type == JOB_CANCEL and body["job_id"] in jobs:
            jobs[body["job_id"]]["pending"] = "cancel"
    return list(jobs.values())


def project_for(conn: Any, user_id: str, project_id: str) -> dict[str, Any] | None:
    """
    One of the user's projects as L{projects_for} shows it, or C{None} when
    the user may not see it (or it does not exist).
    """
    for project in projects_for(conn, user_id):
        if project["id"] == project_id:
            return project
    return None


def members_for(conn: Any, user_id: str, project_id: str) -> list[dict[str, Any]]:
    """
    A project's members with their names, and the user's own additions,
    removals and role changes in flight (C{pending}: C{"add"},
    C{"remove"}, C{"role"}, shown with the role asked for).  Call only for a
    project the user may see.
    """
    members = {
        row["user_id"]: {**dict(row), "pending": None}
        for row in conn.execute(
            "SELECT m.user_id, u.name, m.role FROM replica_members m "
            "LEFT JOIN replica_users u ON u.id = m.user_id WHERE m.project_id = ?",
            (project_id,),
        )
    }
    for type, body in _pending(conn, user_id):
        if body.get("project_id") != project_id:
            continue
        if type == PROJECT_CREATE and user_id not in members:
            members[user_id] = {"user_id": user_id, "name": _name(conn, user_id), "role": "owner",
                                "pending": "create"}
        elif type == MEMBER_ADD:
            member = members.setdefault(
                body["user_id"], {"user_id": body["user_id"], "name": _name(conn, body["user_id"])}
            )
            member.update(role=body["role"], pending="add")
        elif type == MEMBER_REMOVE and body["user_id"] in members:
            members[body["user_id"]]["pending"] = "remove"
        elif type == MEMBER_ROLE and body["user_id"] in members:
            members[body["user_id"]].update(role=body["role"], pending="role")
    order = {"owner": 0, "member": 1, "viewer": 2}
    return sorted(members.values(), key=lambda m: (order.get(m["role"], 3), m["name"] or "", m["user_id"]))


def _name(conn: Any, user_id: str) -> str | None:
    row = conn.execute("SELECT name FROM replica_users WHERE id = ?", (user_id,)).fetchone()
    return None if row is None else str(row[0])


def files_for(conn: Any, user_id: str, project_id: str) -> list[dict[str, Any]]:
    """
    A project's files, if the user may see the project, with the user's own
    deletions in flight (C{pending}: C{"delete"}).
    """
    if Access("replica_").role(conn, project_id, user_id) is None:
        return []
    files = {
        row["id"]: {**dict(row), "pending": None}
        for row in conn.execute(
            "SELECT id, name, size, sha256, state, created_at, updated_at, kind, job_id FROM replica_files "
            "WHERE project_id = ? ORDER BY name, id",
            (project_id,),
        )
    }
    for type, body in _pending(conn, user_id):
        if type == FILE_DELETE and body["file_id"] in files:
            files[body["file_id"]]["pending"] = "delete"
    return list(files.values())


def keys_for(conn: Any, user_id: str) -> list[dict[str, Any]]:
    """
    The user's API keys that work or will (revoked ones are gone), with
    the user's own creations and revocations in flight (C{pending}:
    C{"create"}, C{"revoke"}).  Never a key's hash.
    """
    keys = {
        row["id"]: {"id": row["id"], "name": row["label"], "created_at": row["created_at"], "pending": None}
        for row in conn.execute(
            "SELECT id, label, created_at FROM replica_api_keys WHERE user_id = ? AND revoked_at IS NULL",
            (user_id,),
        )
    }
    for type, body, created_at in conn.execute(
        "SELECT type, body, created_at FROM pending_commands "
        "WHERE user_id = ? AND state = 'pending' AND type IN (?, ?) ORDER BY created_at",
        (user_id, KEY_CREATE, KEY_REVOKE),
    ):
        body = json.loads(body)
        if type == KEY_CREATE and body["key_id"] not in keys:
            keys[body["key_id"]] = {"id": body["key_id"], "name": body["name"], "created_at": created_at,
                                    "pending": "create"}
        elif type == KEY_REVOKE and body["key_id"] in keys:
            keys[body["key_id"]]["pending"] = "revoke"
    return sorted(keys.values(), key=lambda k: (k["created_at"], k["id"]))


def _one_key(keys: list[dict[str, Any]], key_id: str) -> dict[str, Any] | None:
    return next((key for key in keys if key["id"] == key_id), None)


def notices_for(conn: Any, user_id: str) -> list[dict[str, Any]]:
    """
    The user's commands the cloud refused, with its reasons.
    """
    return [
        dict(row)
        for row in conn.execute(
            "SELECT command_id, type, reason, code, created_at FROM pending_commands "
            "WHERE user_id = ? AND state = 'rejected' ORDER BY created_at",
            (user_id,),
        )
    ]


def dismiss(conn: Any, user_id: str, command_id: str) -> bool:
    return bool(
        conn.execute(
            "DELETE FROM pending_commands WHERE user_id = ? AND command_id = ? AND state = 'rejected'",
            (user_id, command_id),
        ).rowcount
    )


def _is_default(conn: Any, project_id: str) -> bool:
    row = conn.execute("SELECT is_default FROM replica_projects WHERE id = ?", (project_id,)).fetchone()
    return row is not None and bool(row[0])
