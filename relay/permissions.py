"""
Who may do what to a project, read from the registry (cloud) or from a
replica (edge): the same rules on both sides, so the edge can refuse early
what the cloud would refuse anyway.  The cloud's decision is the one that
counts; the edge's check only saves a round trip.

Roles: C{owner} (one per project: everything), C{member} (files and jobs),
C{viewer} (read only).  A user who is not a member is told the project does
not exist, so that its existence is not revealed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The roles allowed each action.
RULES: dict[str, frozenset[str]] = {
    "project.read": frozenset({"owner", "member", "viewer"}),
    "project.rename": frozenset({"owner"}),
    "project.delete": frozenset({"owner"}),
    "member.manage": frozenset({"owner"}),
    "file.write": frozenset({"owner", "member"}),
    "file.delete": frozenset({"owner", "member"}),
    "job.submit": frozenset({"owner", "member"}),
    # Members may cancel the jobs they submitted; owners any job.
    "job.cancel": frozenset({"owner", "member"}),
    "job.cancel.others": frozenset({"owner"}),
}

_VERBS = {
    "project.rename": "rename this project",
    "project.delete": "delete this project",
    "member.manage": "change this project's members",
    "file.write": "add files to this project",
    "file.delete": "delete files of this project",
    "job.submit": "submit jobs in this project",
    "job.cancel": "cancel jobs in this project",
    "job.cancel.others": "cancel other people's jobs in this project",
}


class Refused(Exception):
    """
    A command is not allowed or not possible; C{reason} is shown to the user.

    @ivar code: C{unauthenticated}, C{forbidden}, C{not_found}, C{invalid}
        or C{conflict}.
    """

    def __init__(self, reason: str, code: str = "forbidden") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def allowed(role: str | None, action: str) -> bool:
    return role is not None and role in RULES[action]


class Access:
    """
    Reads identities and roles from one set of tables: the registry's
    (C{prefix=""}) or a replica's (C{prefix="replica_"}).
    """

    def __init__(self, prefix: str = "") -> None:
        self._p = prefix

    def actor(self, conn: Any, actor: Mapping[str, Any]) -> Any:
        """
        The acting user's row, if the user (and the API key it acted
        through) may act at all.

        @raise Refused: unknown or disabled user; unknown, foreign or revoked
            key.
        """
        user = conn.execute(
            f"SELECT id, name, disabled, is_admin FROM {self._p}users WHERE id = ?",
            (actor["user_id"],),
        ).fetchone()
        if user is None:
            raise Refused("unknown user", "unauthenticated")
        if user["disabled"]:
            raise Refused(f"user {user['name']} is disabled", "unauthenticated")
        if actor.get("via") == "key":
            key_id = actor.get("key_id")
            key = None if key_id is None else conn.execute(
                f"SELECT user_id, revoked_at FROM {self._p}api_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if key is None or key["user_id"] != user["id"]:
                raise Refused("unknown API key", "unauthenticated")
            if key["revoked_at"] is not None:
                raise Refused("the API key was revoked", "unauthenticated")
        return user

    def role(self, conn: Any, project_id: str, user_id: str) -> str | None:
        row = conn.execute(
            f"SELECT role FROM {self._p}members WHERE project_id = ? AND user_id = ?",
            (project_id, user_id),
        ).fetchone()
        return None if row is None else str(row["role"])

    def require(self, conn: Any, user_id: str, project_id: str, action: str) -> str:
        """
        The user's role in the project, if it allows C{action}.

        @raise Refused: not a member (C{not_found}), or a role that does not
            allow the action (C{forbidden}).
        """
        role = self.role(conn, project_id, user_id)
        if role is None:
            raise Refused("no such project", "not_found")
        if not allowed(role, action):
            raise Refused(f"a {role} may not {_VERBS.get(action, action)}", "forbidden")
        return role

    def check_role_change(self, conn: Any, project_id: str, user_id: str, role: str) -> Any:
        """
        Whether the member C{user_id} of the project may be given C{role}
        (the caller checked the actor may manage members): the same rules on
        both sides.  C{owner} hands the project over (its owner becomes a
        member); the owner's own role changes only that way.  Returns the
        project's row.

        @raise Refused: no such member (C{not_found}); a role that is no
            role (C{invalid}); the role it has already, the owner's own
            role, a default project handed over, or a new owner who has a
            project of that name already (C{conflict}).
        """
        if role not in ("owner", "member", "viewer"):
            raise Refused("a role is 'owner', 'member' or 'viewer'", "invalid")
        project = conn.execute(
            f"SELECT id, name, owner_id, is_default FROM {self._p}projects WHERE id = ?", (project_id,)
        ).fetchone()
        current = self.role(conn, project_id, user_id)
        if project is None or current is None:
            raise Refused("no such member", "not_found")
        if current == role:
            raise Refused(f"already a {role} of this project", "conflict")
        if user_id == project["owner_id"]:
            raise Refused("the owner's role changes only by making another member the owner", "conflict")
        if role == "owner":
            if project["is_default"]:
                raise Refused("a user's default project cannot be handed over", "conflict")
            if conn.execute(
                f"SELECT 1 FROM {self._p}projects WHERE owner_id = ? AND name = ?", (user_id, project["name"])
            ).fetchone():
                raise Refused(f"the new owner has a project named {project['name']!r} already", "conflict")
        return project
