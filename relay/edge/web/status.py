"""
What the status bar shows (C{GET /api/v1/status}, and the C{status} event
on C{/api/v1/events} whenever it changes): the edge's link to the cloud
and what of the caller's is waiting for it.

    {"link": {"state": "up" | "down" | "connecting", "since": ISO 8601 | null},
     "pending": {"commands": N, "bytes": B, "items": [
         {"kind": "command" | "upload", "id", "label", "state", "since", ...}]}}

C{commands} counts the caller's commands the cloud has not answered yet;
C{bytes} the bytes of the caller's uploads that the edge holds and the
cloud does not have yet (an upload still arriving counts what arrived).
Everything is read locally (the link's state in memory, the rest from the
edge's database), so it answers at once also while the link is down.

The board watches the live events that change a user's counts (their
commands, their uploads' state and progress) and polls the link's state
once a second; a user with an open event stream then gets a C{status}
event with the new body, at most about twice a second, and only when it
differs from the last one they were sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from klein import Klein
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from relay.db import Database
from relay.edge.auth import Principal
from relay.edge.events import Event, EventHub
from relay.edge.identity import Identity
from relay.edge.web.guard import answer, authenticated
from relay.edge.web.routes import api_route
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

STATUS = "status"

#: The link's state and since when (seconds on the reactor's clock, or
#: C{None}): L{relay.link.bridge.Bridge.link_state}.
LinkState = Callable[[], tuple[str, float | None]]

#: Live events after which a user's pending counts may differ.
_CHANGES = frozenset({
    "command.pending", "command.applied", "command.rejected",
    "upload.state", "upload.progress", "upload.removed", "transfer.progress",
})
#: Upload states whose bytes are at the edge and not (all) in the cloud.
_WAITING = ("receiving", "staged", "transferring", "failed")


def iso(seconds: float | None) -> str | None:
    """
    A time as ISO 8601 in UTC (C{2026-12-04T01:30:00Z}), or C{None}.
    """
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class StatusBoard(Service):
    """
    The status of the link and of each user's pending work.

    @param link: the link's state now.
    @param audience: the users with an open event stream (those told of
        changes).
    @param flush_delay: how long changes are gathered before they are told.
    """

    log = Logger()

    def __init__(
        self, db: Database, hub: EventHub, clock: IReactorTime, link: LinkState,
        audience: Callable[[], Iterable[str]], *, poll: float = 1.0, flush_delay: float = 0.5,
    ) -> None:
        self._db = db
        self._hub = hub
        self._clock = clock
        self._link = link
        self._audience = audience
        self._poll = LoopingCall(self._check_link)
        self._poll.clock = clock
        self._poll_interval = poll
        self._flush_delay = flush_delay
        self._last_link = link()
        self._told: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._flush: IDelayedCall | None = None
        self._unwatch: Callable[[], None] | None = None

    def startService(self) -> None:
        super().startService()
        self._unwatch = self._hub.watch(self._seen)
        self._poll.start(self._poll_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._poll.running:
            self._poll.stop()
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None

    def link(self) -> dict[str, Any]:
        state, since = self._link()
        return {"state": state, "since": iso(since)}

    async def status(self, user_id: str) -> dict[str, Any]:
        """
        The status bar's body for C{user_id}.
        """
        pending = await self._db.read(pending_for, user_id)
        return {"link": self.link(), "pending": pending}

    def routes(self, app: Klein, identity: Identity) -> None:
        @api_route(app, "/status", ["GET"], legacy=False)
        @authenticated(identity, before_password_change=True)
        async def status(request: IRequest, principal: Principal) -> bytes:
            return answer(request, 200, await self.status(principal.user_id))

    # -- telling of changes -----------------------------------------------------

    def _seen(self, event: Event) -> None:
        if event.kind in _CHANGES:
            self._changed([event.owner])

    def _check_link(self) -> None:
        now = self._link()
        if now != self._last_link:
            self._last_link = now
            self._changed(self._audience(), at_once=True)

    def _changed(self, users: Iterable[str], at_once: bool = False) -> None:
        self._dirty.update(users)
        if self._flush is not None and self._flush.active():
            if not at_once:
                return
            self._flush.cancel()
        self._flush = self._clock.callLater(0 if at_once else self._flush_delay, self._tell)

    def _tell(self) -> None:
        self._flush = None
        watching = set(self._audience())
        users, self._dirty = self._dirty & watching, set()
        # Forget what was told to those who left: they reload on return.
        for gone in set(self._told) - watching:
            del self._told[gone]
        for user_id in users:
            Deferred.fromCoroutine(self._tell_one(user_id)).addErrback(self._failed, user_id)

    def _failed(self, reason: Failure, user_id: str) -> None:
        self.log.failure("the status for {user} failed", reason, user=user_id)

    async def _tell_one(self, user_id: str) -> None:
        body = await self.status(user_id)
        text = json.dumps(body, sort_keys=True)
        if self._told.get(user_id) == text:
            return
        self._told[user_id] = text
        self._hub.publish(user_id, STATUS, body)


# -- reads (on the database thread) ---------------------------------------------


def pending_for(conn: Any, user_id: str) -> dict[str, Any]:
    """
    The user's commands in flight and uploads not in the cloud yet.
    """
    items: list[dict[str, Any]] = []
    commands = conn.execute(
        "SELECT command_id, type, body, created_at FROM pending_commands "
        "WHERE user_id = ? AND state = 'pending' ORDER BY created_at, command_id",
        (user_id,),
    ).fetchall()
    for row in commands:
        items.append({
            "kind": "command", "id": row["command_id"], "type": row["type"],
            "label": _label(conn, row["type"], json.loads(row["body"])), "state": "pending",
            "since": iso(row["created_at"]),
        })
    uploads = conn.execute(
        "SELECT id, filename, state, length, \"offset\", transferred, created FROM uploads "
        f"WHERE owner = ? AND state IN ({', '.join('?' * len(_WAITING))}) ORDER BY created, id",
        (user_id, *_WAITING),
    ).fetchall()
    waiting = 0
    for row in uploads:
        held = max(0, int(row["offset"]) - int(row["transferred"]))
        waiting += held
        items.append({
            "kind": "upload", "id": row["id"], "label": row["filename"] or row["id"], "state": row["state"],
            "since": iso(row["created"]), "bytes": held, "length": row["length"],
        })
    return {"commands": len(commands), "bytes": waiting, "items": items}


def _label(conn: Any, type: str, body: dict[str, Any]) -> str:
    """
    What a pending command is, in words (names from the replica).
    """
    project = _project_name(conn, body.get("project_id"), body)
    member = _user_name(conn, body.get("user_id"))
    labels: dict[str, Callable[[], str]] = {
        PROJECT_CREATE: lambda: f"create project {body.get('name')}",
        PROJECT_RENAME: lambda: f"rename project {project} to {body.get('name')}",
        PROJECT_DELETE: lambda: f"delete project {project}",
        MEMBER_ADD: lambda: f"add {member} to {project} as {body.get('role')}",
        MEMBER_REMOVE: lambda: f"remove {member} from {project}",
        MEMBER_ROLE: lambda: f"make {member} {body.get('role')} of {project}",
        JOB_SUBMIT: lambda: f"submit a {body.get('kind')} job in {project}",
        JOB_CANCEL: lambda: f"cancel job {str(body.get('job_id'))[:8]}",
        FILE_DELETE: lambda: f"delete file {_file_name(conn, body.get('file_id'))}",
        USER_PASSWORD: lambda: "change your password",
        KEY_CREATE: lambda: f"create API key {body.get('name')}",
        KEY_REVOKE: lambda: f"revoke API key {body.get('key_id')}",
    }
    return labels[type]() if type in labels else type


def _project_name(conn: Any, project_id: Any, body: dict[str, Any]) -> str:
    if not isinstance(project_id, str):
        return "?"
    row = conn.execute("SELECT name FROM replica_projects WHERE id = ?", (project_id,)).fetchone()
    if row is not None:
        return str(row[0])
    # A project created here, still on its way.
    for (created,) in conn.execute(
        "SELECT body FROM pending_commands WHERE type = ? AND state = 'pending'", (PROJECT_CREATE,)
    ):
        created = json.loads(created)
        if created.get("project_id") == project_id:
            return str(created.get("name"))
    return project_id[:8]


def _user_name(conn: Any, user_id: Any) -> str:
    if not isinstance(user_id, str):
        return "?"
    row = conn.execute("SELECT name FROM replica_users WHERE id = ?", (user_id,)).fetchone()
    return user_id[:8] if row is None else str(row[0])


def _file_name(conn: Any, file_id: Any) -> str:
    if not isinstance(file_id, str):
        return "?"
    row = conn.execute("SELECT name FROM replica_files WHERE id = ?", (file_id,)).fetchone()
    return file_id[:8] if row is None else str(row[0])
