"""
Edge commands, applied on the cloud: authorised against the registry,
never on the edge's word.

Each command arrives through the inbox (one transaction per message) and
gets exactly one answer in the event log: the registry changes it caused
followed by C{command.applied}, or C{command.rejected} with a reason (and
no change at all: the command's work runs inside a savepoint that a refusal
rolls back).  The answer is recorded under the command's id, so a command
that arrives again (the edge sent it twice) is not applied twice.

What the cloud trusts: the edge says which user acts (it checked the
password or API key against hashes the cloud gave it).  What it does not:
anything about what that user may do; a disabled user, a revoked key, a
non-member or a viewer is refused here whatever the edge thought.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from zope.interface import Interface, implementer

from relay.audit import AuditLog
from relay.cloud.registry import Registry
from relay.credentials import password_hash_digest
from relay.link.envelope import Envelope
from relay.permissions import Access, Refused, allowed
from relay.replication import COMMAND_APPLIED, COMMAND_REJECTED
from relay.sync_messages import (
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
from relay.text import bad_text

_EDGE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class ICommandEffects(Interface):
    """
    What other cloud components do when a command changes jobs or files
    (dispatch to workers, delete the object), in the same transaction.  A
    method may raise L{Refused} to refuse the command.
    """

    def job_queued(conn: Any, job: Any) -> None:
        """
        A job was submitted (its registry row, state C{queued}).
        """

    def job_cancelled(conn: Any, job: Any) -> None:
        """
        A queued or running job was cancelled (its row before the change).
        """

    def file_deleted(conn: Any, file: Any) -> None:
        """
        A file was deleted (its row before the deletion).
        """


@implementer(ICommandEffects)
class Effects:
    """
    Several components' effects, each told in turn (the jobs component's,
    the download component's).
    """

    def __init__(self, *parts: ICommandEffects) -> None:
        self._parts = parts

    def job_queued(self, conn: Any, job: Any) -> None:
        for part in self._parts:
            part.job_queued(conn, job)

    def job_cancelled(self, conn: Any, job: Any) -> None:
        for part in self._parts:
            part.job_cancelled(conn, job)

    def file_deleted(self, conn: Any, file: Any) -> None:
        for part in self._parts:
            part.file_deleted(conn, file)


def edge_of(source: str) -> str:
    edge = source.removeprefix("edge:")
    return edge if _EDGE.fullmatch(edge) else "unknown"


class CloudCommands:
    """
    The inbox handlers for every edge command.
    """

    log = Logger()

    def __init__(self, registry: Registry, effects: ICommandEffects, audit: AuditLog | None = None) -> None:
        self._registry = registry
        self._effects = effects
        self._audit = audit
        self._access = Access("")
        self._apply: dict[str, Callable[[Any, Any, dict[str, Any], str], None]] = {
            PROJECT_CREATE: self._project_create,
            PROJECT_RENAME: self._project_rename,
            PROJECT_DELETE: self._project_delete,
            MEMBER_ADD: self._member_add,
            MEMBER_REMOVE: self._member_remove,
            MEMBER_ROLE: self._member_role,
            JOB_SUBMIT: self._job_submit,
            JOB_CANCEL: self._job_cancel,
            FILE_DELETE: self._file_delete,
            USER_PASSWORD: self._user_password,
            KEY_CREATE: self._key_create,
            KEY_REVOKE: self._key_revoke,
        }

    def register(self, inbox: Any) -> None:
        for type in self._apply:
            inbox.register(type, self.handle)

    def handle(self, conn: Any, message: Envelope) -> None:
        """
        Apply or refuse one command (on the database thread, inside the
        inbox's transaction).
        """
        body = message.body
        command_id = body["command_id"]
        if conn.execute("SELECT 1 FROM commands WHERE command_id = ?", (command_id,)).fetchone():
            self.log.info("command {id} was answered before; ignoring it", id=command_id)
            return
        edge = edge_of(message.source)
        conn.execute("SAVEPOINT command")
        try:
            actor = self._access.actor(conn, body["actor"])
            # The edge refuses such text; an edge that did not is refused here.
            if bad_text(body) is not None:
                raise Refused("text must be valid Unicode (no lone surrogates or non-characters)", "invalid")
            self._apply[message.type](conn, actor, body, command_id)
        except Refused as refusal:
            conn.execute("ROLLBACK TO SAVEPOINT command")
            conn.execute("RELEASE SAVEPOINT command")
            self._registry.log.append(
                conn, COMMAND_REJECTED,
                {"command_id": command_id, "edge": edge, "reason": refusal.reason, "code": refusal.code},
                command_id,
            )
            self._record(conn, command_id, edge, message.type, body, "rejected", refusal)
            self._audited("command.refused", message.type, edge, body, reason=refusal.reason, code=refusal.code)
            self.log.info(
                "{type} {id} from {edge} refused: {reason}",
                type=message.type, id=command_id, edge=edge, reason=refusal.reason,
            )
            return
        conn.execute("RELEASE SAVEPOINT command")
        self._registry.log.append(conn, COMMAND_APPLIED, {"command_id": command_id, "edge": edge}, command_id)
        self._record(conn, command_id, edge, message.type, body, "applied", None)
        self._audited("command.applied", message.type, edge, body)

    def _audited(self, event: str, type: str, edge: str, body: dict[str, Any], **more: Any) -> None:
        """An audit record of a command: its ids and role, never its other fields (a hash, a name)."""
        if self._audit is None:
            return
        actor = body.get("actor")
        ids = {k: v for k, v in body.items() if k == "role" or (k.endswith("_id") and k != "command_id")}
        self._audit.record(event, actor=actor.get("user_id") if isinstance(actor, dict) else None,
                           edge=edge, type=type, command_id=body.get("command_id"), **ids, **more)

    def _record(
        self, conn: Any, command_id: str, edge: str, type: str, body: dict[str, Any], status: str,
        refusal: Refused | None,
    ) -> None:
        # seq 0: the outcome event, numbered after the commit, says where it
        # is (L{relay.cloud.sync._outcomes}).
        conn.execute(
            "INSERT INTO commands (command_id, edge, type, user_id, status, reason, code, seq, decided_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (command_id, edge, type, body["actor"]["user_id"], status,
             refusal and refusal.reason, refusal and refusal.code, self._registry.log.now()),
        )

    # -- the commands ----------------------------------------------------------

    def _project_create(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        self._registry.create_project(
            conn, actor["id"], body["name"], body["description"],
            project_id=body["project_id"], command_id=command_id,
        )

    def _project_rename(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        self._access.require(conn, actor["id"], body["project_id"], "project.rename")
        self._registry.rename_project(conn, body["project_id"], body["name"], command_id)

    def _project_delete(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        self._access.require(conn, actor["id"], body["project_id"], "project.delete")
        files = conn.execute("SELECT * FROM files WHERE project_id = ?", (body["project_id"],)).fetchall()
        self._registry.delete_project(conn, body["project_id"], command_id)
        # Its files go with it: their effects too (their objects are deleted).
        for file in files:
            self._effects.file_deleted(conn, file)

    def _member_add(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        self._access.require(conn, actor["id"], body["project_id"], "member.manage")
        self._registry.set_member(conn, body["project_id"], body["user_id"], body["role"], command_id)

    def _member_remove(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        role = self._access.role(conn, body["project_id"], actor["id"])
        leaving = body["user_id"] == actor["id"] and role in ("member", "viewer")
        if not leaving:
            self._access.require(conn, actor["id"], body["project_id"], "member.manage")
        self._registry.remove_member(conn, body["project_id"], body["user_id"], command_id)

    def _member_role(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        self._access.require(conn, actor["id"], body["project_id"], "member.manage")
        self._registry.change_role(conn, body["project_id"], body["user_id"], body["role"], command_id)

    def _job_submit(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        self._access.require(conn, actor["id"], body["project_id"], "job.submit")
        job_id = self._registry.submit_job(
            conn, body["project_id"], actor["id"], body["kind"], body["parameters"], body["inputs"],
            job_id=body["job_id"], command_id=command_id,
        )
        self._effects.job_queued(conn, self._registry.job(conn, job_id))

    def _job_cancel(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        job = self._registry.job(conn, body["job_id"])
        role = None if job is None else self._access.role(conn, job["project_id"], actor["id"])
        if job is None or role is None:
            raise Refused("no such job", "not_found")
        self._access.require(conn, actor["id"], job["project_id"], "job.cancel")
        if job["submitted_by"] != actor["id"] and not allowed(role, "job.cancel.others"):
            raise Refused("only the project's owner may cancel other people's jobs", "forbidden")
        self._registry.cancel_job(conn, job["id"], command_id)
        self._effects.job_cancelled(conn, job)

    def _file_delete(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        file = self._registry.file(conn, body["file_id"])
        if file is None or self._access.role(conn, file["project_id"], actor["id"]) is None:
            raise Refused("no such file", "not_found")
        self._access.require(conn, actor["id"], file["project_id"], "file.delete")
        self._registry.delete_file(conn, file["id"], command_id)
        self._effects.file_deleted(conn, file)

    def _user_password(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        # Only ever the actor's own password: the command names no user.
        # The edge checked the current password; 'replaces' says against
        # which hash, so a change made meanwhile (an administrator's reset)
        # is not silently overwritten by an older request.
        current = self._registry.user(conn, actor["id"])["password_hash"]
        if not hmac.compare_digest(password_hash_digest(current), body["replaces"]):
            raise Refused("the password was changed meanwhile; log in again with the current one", "conflict")
        self._registry.set_password(conn, actor["id"], body["password_hash"], command_id)

    def _key_create(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        # Only ever a key of the actor's own: the command names no user.
        self._registry.add_key(conn, actor["id"], body["key_id"], body["key_hash"], body["name"], command_id)

    def _key_revoke(self, conn: Any, actor: Any, body: dict[str, Any], command_id: str) -> None:
        self._registry.revoke_key(conn, body["key_id"], command_id, owner=actor["id"])
