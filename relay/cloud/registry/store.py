"""
The registry: users, API keys, projects and their members, files and jobs.
The cloud's copy is the source of truth.

Every method runs inside the caller's transaction (its first argument is
the connection) and logs each row it changes to the L{EventLog}, which is
how the edges hear of it.  Methods check what the data itself requires
(names unique, a job's state machine, the default project kept) and raise
L{Refused} with a reason otherwise; who may ask for a change is decided by
the caller (L{relay.cloud.commands} for edges, the operator for the CLI).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from twisted.internet.interfaces import IReactorTime

from relay.cloud.sync import EventLog
from relay.credentials import NewApiKey, new_api_key
from relay.permissions import Access, Refused
from relay.replication import (
    API_KEYS,
    FILE_KINDS,
    FILES,
    FINAL_JOB_STATES,
    JOBS,
    MEMBERS,
    PROJECTS,
    USERS,
    encode_json,
)

USER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
DEFAULT_PROJECT_NAME = "Home"


def new_id() -> str:
    return uuid.uuid4().hex


def clean_name(name: str, what: str = "project name") -> str:
    """
    A project or file name without surrounding space.

    @raise Refused: empty, too long, or with control characters.
    """
    cleaned = name.strip()
    if not cleaned:
        raise Refused(f"a {what} cannot be empty", "invalid")
    if len(cleaned) > 200:
        raise Refused(f"a {what} has at most 200 characters", "invalid")
    if any(ord(c) < 32 or ord(c) == 127 for c in cleaned):
        raise Refused(f"a {what} cannot contain control characters", "invalid")
    return cleaned


class Registry:
    """
    Changes to the registry, each logged as events.

    @param command_id: on each mutator, the edge command that caused the
        change (carried by its events so the edge can reconcile), if any.
    """

    def __init__(self, log: EventLog, clock: IReactorTime) -> None:
        self.log = log
        self._clock = clock

    def _now(self) -> float:
        return self._clock.seconds()

    # -- users and keys --------------------------------------------------------

    def add_user(
        self, conn: Any, name: str, password_hash: str, *, is_admin: bool = False,
        user_id: str | None = None, temporary: bool = False,
    ) -> dict[str, Any]:
        """
        Create a user and their default project; return the user's row.
        """
        if not USER_NAME.fullmatch(name):
            raise Refused(
                "a user name is 1 to 63 lower-case letters, digits, '.', '_' or '-', "
                "starting with a letter or digit", "invalid",
            )
        if self.user_by_name(conn, name) is not None:
            raise Refused(f"user {name} already exists", "conflict")
        user_id = user_id or new_id()
        now = self._now()
        conn.execute(
            "INSERT INTO users (id, name, password_hash, is_admin, disabled, must_change_password, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, 0, ?, ?, ?)",
            (user_id, name, password_hash, int(is_admin), int(temporary), now, now),
        )
        self.log.put(conn, USERS, (user_id,))
        self.create_project(conn, user_id, DEFAULT_PROJECT_NAME, is_default=True)
        return dict(self.user(conn, user_id))

    def set_password(
        self, conn: Any, user_id: str, password_hash: str, command_id: str | None = None, *,
        temporary: bool = False,
    ) -> None:
        """
        A new password hash; C{temporary} when someone other than the user
        chose it (generated, or set by an admin): the user must change it
        before doing anything else.
        """
        self._update_user(
            conn, user_id, "password_hash = ?, must_change_password = ?",
            (password_hash, int(temporary)), command_id,
        )

    def set_disabled(self, conn: Any, user_id: str, disabled: bool) -> None:
        self._update_user(conn, user_id, "disabled = ?", (int(disabled),))

    def set_admin(self, conn: Any, user_id: str, is_admin: bool) -> None:
        self._update_user(conn, user_id, "is_admin = ?", (int(is_admin),))

    def _update_user(
        self, conn: Any, user_id: str, assignment: str, values: tuple[Any, ...],
        command_id: str | None = None,
    ) -> None:
        changed = conn.execute(
            f"UPDATE users SET {assignment}, updated_at = ? WHERE id = ?", (*values, self._now(), user_id)
        ).rowcount
        if not changed:
            raise Refused("no such user", "not_found")
        self.log.put(conn, USERS, (user_id,), command_id)

    def create_key(self, conn: Any, user_id: str, label: str = "") -> NewApiKey:
        """
        A new API key for the user; its token is in the result only.
        """
        if self.user(conn, user_id) is None:
            raise Refused("no such user", "not_found")
        key = new_api_key()
        conn.execute(
            "INSERT INTO api_keys (id, user_id, key_hash, label, created_at) VALUES (?, ?, ?, ?, ?)",
            (key.key_id, user_id, key.key_hash, label, self._now()),
        )
        self.log.put(conn, API_KEYS, (key.key_id,))
        return key

    def add_key(
        self, conn: Any, user_id: str, key_id: str, key_hash: str, label: str, command_id: str | None = None
    ) -> None:
        """
        Register an API key made elsewhere (at an edge, which holds its
        secret only long enough to show it): its id and the hash of its
        secret.
        """
        if self.user(conn, user_id) is None:
            raise Refused("no such user", "not_found")
        if conn.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone():
            raise Refused("an API key with this id exists already", "conflict")
        conn.execute(
            "INSERT INTO api_keys (id, user_id, key_hash, label, created_at) VALUES (?, ?, ?, ?, ?)",
            (key_id, user_id, key_hash, label, self._now()),
        )
        self.log.put(conn, API_KEYS, (key_id,), command_id)

    def revoke_key(self, conn: Any, key_id: str, command_id: str | None = None, *, owner: str | None = None) -> None:
        """
        Revoke a key; with C{owner}, only one of that user's (another's is
        not found).
        """
        key = conn.execute("SELECT user_id, revoked_at FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if key is None or (owner is not None and key["user_id"] != owner):
            raise Refused(f"no API key {key_id}", "not_found")
        if key["revoked_at"] is not None:
            raise Refused(f"API key {key_id} is already revoked", "conflict")
        conn.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (self._now(), key_id))
        self.log.put(conn, API_KEYS, (key_id,), command_id)

    # -- projects --------------------------------------------------------------

    def create_project(
        self, conn: Any, owner_id: str, name: str, description: str = "", *,
        project_id: str | None = None, is_default: bool = False, command_id: str | None = None,
    ) -> str:
        name = clean_name(name)
        project_id = project_id or new_id()
        if self.project(conn, project_id) is not None:
            raise Refused("a project with this id exists already", "conflict")
        self._name_free(conn, owner_id, name)
        now = self._now()
        conn.execute(
            "INSERT INTO projects (id, name, description, owner_id, is_default, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (project_id, name, description, owner_id, int(is_default), now, now),
        )
        conn.execute(
            "INSERT INTO members (project_id, user_id, role) VALUES (?, ?, 'owner')", (project_id, owner_id)
        )
        self.log.put(conn, PROJECTS, (project_id,), command_id)
        self.log.put(conn, MEMBERS, (project_id, owner_id), command_id)
        return project_id

    def _name_free(self, conn: Any, owner_id: str, name: str) -> None:
        if conn.execute(
            "SELECT 1 FROM projects WHERE owner_id = ? AND name = ?", (owner_id, name)
        ).fetchone():
            raise Refused(f"you already have a project named {name!r}", "conflict")

    def rename_project(self, conn: Any, project_id: str, name: str, command_id: str | None = None) -> None:
        project = self._project(conn, project_id)
        name = clean_name(name)
        if name == project["name"]:
            raise Refused(f"the project is already named {name!r}", "conflict")
        self._name_free(conn, project["owner_id"], name)
        conn.execute(
            "UPDATE projects SET name = ?, updated_at = ? WHERE id = ?", (name, self._now(), project_id)
        )
        self.log.put(conn, PROJECTS, (project_id,), command_id)

    def delete_project(self, conn: Any, project_id: str, command_id: str | None = None) -> None:
        """
        Delete a project with its members, files and jobs (one event: the
        replicas cascade as the registry's foreign keys do).
        """
        project = self._project(conn, project_id)
        if project["is_default"]:
            raise Refused("a user's default project cannot be deleted", "conflict")
        for table in ("jobs", "files", "members"):
            conn.execute(f"DELETE FROM {table} WHERE project_id = ?", (project_id,))
        conn.execute("DELETE FROM projects WHERE id = ?", (project_id,))
        self.log.delete(conn, PROJECTS, (project_id,), command_id)

    def set_member(
        self, conn: Any, project_id: str, user_id: str, role: str, command_id: str | None = None
    ) -> None:
        project = self._project(conn, project_id)
        user = self.user(conn, user_id)
        if user is None:
            raise Refused("no such user", "not_found")
        if user["disabled"]:
            raise Refused(f"user {user['name']} is disabled", "conflict")
        if role not in ("member", "viewer"):
            raise Refused("a member's role is 'member' or 'viewer'", "invalid")
        if user_id == project["owner_id"]:
            raise Refused("the owner's role cannot change", "conflict")
        current = self.role(conn, project_id, user_id)
        if current == role:
            raise Refused(f"{user['name']} is already a {role}", "conflict")
        conn.execute(
            "INSERT INTO members (project_id, user_id, role) VALUES (?, ?, ?) "
            "ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
            (project_id, user_id, role),
        )
        self.log.put(conn, MEMBERS, (project_id, user_id), command_id)

    def change_role(
        self, conn: Any, project_id: str, user_id: str, role: str, command_id: str | None = None
    ) -> None:
        """
        Give a member another role (L{Access.check_role_change} says which
        changes are allowed); C{owner} hands the project over, and its owner
        until now becomes a member.
        """
        project = Access("").check_role_change(conn, project_id, user_id, role)
        if role == "owner":
            previous = project["owner_id"]
            conn.execute(
                "UPDATE projects SET owner_id = ?, updated_at = ? WHERE id = ?", (user_id, self._now(), project_id)
            )
            conn.execute(
                "UPDATE members SET role = 'member' WHERE project_id = ? AND user_id = ?", (project_id, previous)
            )
            self.log.put(conn, PROJECTS, (project_id,), command_id)
            self.log.put(conn, MEMBERS, (project_id, previous), command_id)
        conn.execute(
            "UPDATE members SET role = ? WHERE project_id = ? AND user_id = ?", (role, project_id, user_id)
        )
        self.log.put(conn, MEMBERS, (project_id, user_id), command_id)

    def remove_member(self, conn: Any, project_id: str, user_id: str, command_id: str | None = None) -> None:
        project = self._project(conn, project_id)
        if user_id == project["owner_id"]:
            raise Refused("the owner cannot be removed", "conflict")
        if self.role(conn, project_id, user_id) is None:
            raise Refused("not a member of this project", "not_found")
        conn.execute("DELETE FROM members WHERE project_id = ? AND user_id = ?", (project_id, user_id))
        self.log.delete(conn, MEMBERS, (project_id, user_id), command_id)

    # -- files -----------------------------------------------------------------

    def put_file(
        self, conn: Any, project_id: str, name: str, size: int, *, sha256: str | None = None,
        object_key: str | None = None, state: str = "stored", file_id: str | None = None,
        kind: str = "upload", job_id: str | None = None,
    ) -> str:
        """
        Record a file (new, or a new state of an existing one): for the
        transfer path, when the cloud has the object.

        @param kind: C{upload} (someone uploaded it) or C{result} (the job
            C{job_id} made it).
        """
        if kind not in FILE_KINDS or (kind == "result") != (job_id is not None):
            raise ValueError(f"a file is an upload, or a result with its job: not {kind!r} of {job_id!r}")
        self._project(conn, project_id)
        name = clean_name(name, "file name")
        file_id = file_id or new_id()
        now = self._now()
        conn.execute(
            "INSERT INTO files (id, project_id, name, size, sha256, object_key, state, created_at, updated_at, "
            "kind, job_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, size = excluded.size, "
            "sha256 = excluded.sha256, object_key = excluded.object_key, state = excluded.state, "
            "updated_at = excluded.updated_at",
            (file_id, project_id, name, size, sha256, object_key, state, now, now, kind, job_id),
        )
        self.log.put(conn, FILES, (file_id,))
        return file_id

    def delete_file(self, conn: Any, file_id: str, command_id: str | None = None) -> None:
        if self.file(conn, file_id) is None:
            raise Refused("no such file", "not_found")
        conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.log.delete(conn, FILES, (file_id,), command_id)

    # -- jobs ------------------------------------------------------------------

    def submit_job(
        self, conn: Any, project_id: str, submitted_by: str, kind: str, parameters: dict[str, Any],
        inputs: list[str], *, job_id: str | None = None, command_id: str | None = None,
    ) -> str:
        self._project(conn, project_id)
        job_id = job_id or new_id()
        if self.job(conn, job_id) is not None:
            raise Refused("a job with this id exists already", "conflict")
        for file_id in inputs:
            found = self.file(conn, file_id)
            if found is None or found["project_id"] != project_id:
                raise Refused(f"input file {file_id} is not in this project", "invalid")
        conn.execute(
            "INSERT INTO jobs (id, project_id, kind, parameters, inputs, state, progress, submitted_by, "
            "created_at, result_files) VALUES (?, ?, ?, ?, ?, 'queued', 0, ?, ?, '[]')",
            (job_id, project_id, kind, encode_json(parameters), encode_json(inputs), submitted_by,
             self._now()),
        )
        self.log.put(conn, JOBS, (job_id,), command_id)
        return job_id

    def start_job(self, conn: Any, job_id: str, attempt: int | None = None) -> None:
        """
        queued -> running (a worker took it, for its C{attempt}th run).
        """
        job = self._job_in(conn, job_id, ("queued",))
        attempt = int(job["attempts"]) + 1 if attempt is None else attempt
        conn.execute(
            "UPDATE jobs SET state = 'running', started_at = ?, attempts = ? WHERE id = ?",
            (self._now(), attempt, job_id),
        )
        self.log.put(conn, JOBS, (job_id,))

    def requeue_job(self, conn: Any, job_id: str) -> None:
        """
        running -> queued (the worker running it was lost; another attempt
        follows).
        """
        self._job_in(conn, job_id, ("running",))
        conn.execute("UPDATE jobs SET state = 'queued', started_at = NULL WHERE id = ?", (job_id,))
        self.log.put(conn, JOBS, (job_id,))

    def set_progress(self, conn: Any, job_id: str, progress: float) -> None:
        self._job_in(conn, job_id, ("running",))
        conn.execute("UPDATE jobs SET progress = ? WHERE id = ?", (min(1.0, max(0.0, progress)), job_id))
        self.log.put(conn, JOBS, (job_id,))

    def finish_job(
        self, conn: Any, job_id: str, state: str, *, result_files: Sequence[str] = (),
        error: str | None = None,
    ) -> None:
        """
        running -> succeeded, failed or timed_out.
        """
        if state not in ("succeeded", "failed", "timed_out"):
            raise ValueError(f"a job finishes as succeeded, failed or timed_out, not {state!r}")
        self._job_in(conn, job_id, ("running",))
        conn.execute(
            "UPDATE jobs SET state = ?, progress = ?, finished_at = ?, result_files = ?, error = ? WHERE id = ?",
            (state, 1.0 if state == "succeeded" else self.job(conn, job_id)["progress"], self._now(),
             encode_json(list(result_files)), None if error is None else error[:4000], job_id),
        )
        self.log.put(conn, JOBS, (job_id,))

    def cancel_job(self, conn: Any, job_id: str, command_id: str | None = None) -> None:
        """
        queued or running -> cancelled.
        """
        self._job_in(conn, job_id, ("queued", "running"))
        conn.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = ? WHERE id = ?", (self._now(), job_id)
        )
        self.log.put(conn, JOBS, (job_id,), command_id)

    def _job_in(self, conn: Any, job_id: str, states: tuple[str, ...]) -> Any:
        job = self.job(conn, job_id)
        if job is None:
            raise Refused("no such job", "not_found")
        if job["state"] not in states:
            final = "has already finished" if job["state"] in FINAL_JOB_STATES else f"is {job['state']}"
            raise Refused(f"the job {final}", "conflict")
        return job

    # -- reading ---------------------------------------------------------------

    def user(self, conn: Any, user_id: str) -> Any:
        return conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()

    def user_by_name(self, conn: Any, name: str) -> Any:
        return conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()

    def project(self, conn: Any, project_id: str) -> Any:
        return conn.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()

    def _project(self, conn: Any, project_id: str) -> Any:
        project = self.project(conn, project_id)
        if project is None:
            raise Refused("no such project", "not_found")
        return project

    def role(self, conn: Any, project_id: str, user_id: str) -> str | None:
        row = conn.execute(
            "SELECT role FROM members WHERE project_id = ? AND user_id = ?", (project_id, user_id)
        ).fetchone()
        return None if row is None else str(row[0])

    def file(self, conn: Any, file_id: str) -> Any:
        return conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()

    def job(self, conn: Any, job_id: str) -> Any:
        return conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def users(self, conn: Any) -> list[dict[str, Any]]:
        return [
            dict(row) for row in conn.execute(
                "SELECT u.id, u.name, u.is_admin, u.disabled, u.created_at, u.updated_at, "
                "(SELECT count(*) FROM api_keys k WHERE k.user_id = u.id AND k.revoked_at IS NULL) "
                "AS active_keys FROM users u ORDER BY u.name"
            )
        ]

    def keys(self, conn: Any, user_id: str | None = None) -> list[dict[str, Any]]:
        query = (
            "SELECT k.id, u.name AS user, k.label, k.created_at, k.revoked_at FROM api_keys k "
            "JOIN users u ON u.id = k.user_id"
        )
        args: tuple[Any, ...] = ()
        if user_id is not None:
            query += " WHERE k.user_id = ?"
            args = (user_id,)
        return [dict(row) for row in conn.execute(query + " ORDER BY u.name, k.created_at", args)]

    def projects(self, conn: Any, user_id: str | None = None) -> list[dict[str, Any]]:
        """
        Projects with their owner's name and member and file counts; only
        the user's when C{user_id} is given.
        """
        query = (
            "SELECT p.id, p.name, p.description, u.name AS owner, p.is_default, p.created_at, "
            "(SELECT count(*) FROM members m WHERE m.project_id = p.id) AS members, "
            "(SELECT count(*) FROM files f WHERE f.project_id = p.id) AS files "
            "FROM projects p JOIN users u ON u.id = p.owner_id"
        )
        args: tuple[Any, ...] = ()
        if user_id is not None:
            query += " WHERE EXISTS (SELECT 1 FROM members m WHERE m.project_id = p.id AND m.user_id = ?)"
            args = (user_id,)
        return [dict(row) for row in conn.execute(query + " ORDER BY u.name, p.name", args)]
