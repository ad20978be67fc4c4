"""
The edge's JSON API for projects, members, files, jobs and notices
(C{docs/api.md} describes it for people).

Reads are answered from the replica with the caller's own commands in
flight overlaid (L{relay.edge.replica.pending}), so they never wait on the
link.  Commands are checked against the replica, recorded as pending and
put in the outbox in one transaction (L{CommandIssuer.issue}), and answered
C{202} with the command's id and what the edge now shows; the cloud's
answer arrives later as C{command.applied} or C{command.rejected} on
C{/api/events}.  A refusal the replica already foresees is answered at
once (403, 404, 409), bad input with 400; neither stores anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from relay.credentials import DEFAULT_COST, ScryptCost
from relay.db import Database
from relay.edge.auth import Principal
from relay.edge.events import EventHub
from relay.edge.identity import CpuRunner, Identity, json_body
from relay.edge.replica.kinds import job_kinds
from relay.edge.replica.pending import (
    CommandIssuer,
    dismiss,
    jobs_for,
    notices_for,
    project_for,
)
from relay.edge.web import openapi, views
from relay.edge.web.errors import REFUSAL_STATUS, json_routing_errors
from relay.edge.web.guard import answer, authenticated
from relay.edge.web.keys import ApiKeys
from relay.edge.web.password import PasswordChange
from relay.edge.web.routes import api_route
from relay.edge.web.status import LinkState, StatusBoard
from relay.edge.web.stream import EventStreams
from relay.permissions import Refused
from relay.sync_messages import (
    COMMANDS,
    FILE_DELETE,
    JOB_CANCEL,
    JOB_SUBMIT,
    MEMBER_ADD,
    MEMBER_REMOVE,
    MEMBER_ROLE,
    PROJECT_CREATE,
    PROJECT_DELETE,
    PROJECT_RENAME,
    SCHEMAS,
)

STATUS = REFUSAL_STATUS

COMMAND_PENDING = "command.pending"


def _field_validators() -> dict[str, Draft202012Validator]:
    """
    Each command's fields as the cloud's catalogue describes them (no field
    required here: the routes say which they need).
    """
    validators = {}
    for type in COMMANDS:
        properties = {k: v for k, v in SCHEMAS[type][0]["properties"].items() if k not in ("command_id", "actor")}
        validators[type] = Draft202012Validator(
            {"type": "object", "properties": properties, "additionalProperties": False}
        )
    return validators


_VALIDATORS = _field_validators()
_is_id = views.is_id


class BadInput(Exception):
    """
    The request itself is wrong (400); C{str()} says how.
    """


def _check_fields(type: str, fields: dict[str, Any]) -> None:
    error = best_match(_VALIDATORS[type].iter_errors(fields))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "body"
        raise BadInput(f"{where}: {error.message}")
    name = fields.get("name")
    if isinstance(name, str) and any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadInput("a name cannot contain control characters")


def _text(body: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = body.get(name, None if required else default)
    if not isinstance(value, str):
        raise BadInput(f"send {name!r} as a string")
    return value


class EdgeApi:
    """
    The API's read and command routes.

    @param wake: called after a command was committed (the outbox's
        C{wake}, so it is published at once).
    """

    def __init__(
        self, identity: Identity, db: Database, issuer: CommandIssuer, hub: EventHub,
        wake: Callable[[], object],
    ) -> None:
        self._identity = identity
        self._db = db
        self._issuer = issuer
        self._hub = hub
        self._wake = wake

    # -- commands --------------------------------------------------------------

    async def command(
        self, request: IRequest, principal: Principal, type: str, fields: dict[str, Any],
        show: tuple[str, Callable[[Any], Any]] | None = None, path: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        """
        Issue one command and answer 202 with its id and, under C{show[0]},
        what C{show[1]} reads in the same transaction (the thing as the edge
        now shows it), or the refusal.

        @param path: the ids the URL named, each with what it names: one
            that cannot be an id is answered 404.
        """
        for value, what in path:
            if not _is_id(value):
                return answer(request, 404, {"error": f"no such {what}"})
        try:
            _check_fields(type, fields)
        except BadInput as e:
            return answer(request, 400, {"error": str(e)})

        def work(conn: Any) -> tuple[str, Any]:
            command_id = self._issuer.issue(conn, principal, type, fields)
            return command_id, None if show is None else show[1](conn)

        try:
            command_id, shown = await self._db.run(work)
        except Refused as refused:
            return answer(request, STATUS.get(refused.code, 403), {"error": refused.reason, "code": refused.code})
        except ValueError as e:
            return answer(request, 400, {"error": str(e)})
        self._wake()
        self._hub.publish(principal.user_id, COMMAND_PENDING, {"command_id": command_id, "type": type})
        result: dict[str, Any] = {"command_id": command_id, "state": "pending"}
        if show is not None:
            result[show[0]] = shown
        return answer(request, 202, result)

    # -- routes ----------------------------------------------------------------

    def routes(self, app: Klein) -> None:  # noqa: C901 - one closure per route
        authed, read = authenticated(self._identity), self._db.read

        @api_route(app, "/projects", ["GET"])
        @authed
        async def list_projects(request: IRequest, principal: Principal) -> bytes:
            projects = await read(views.projects_with_members, principal.user_id)
            return answer(request, 200, {"projects": projects})

        @api_route(app, "/projects", ["POST"])
        @authed
        async def create_project(request: IRequest, principal: Principal) -> bytes:
            body = json_body(request)
            if isinstance(body, bytes):
                return body
            try:
                fields = {"project_id": uuid.uuid4().hex, "name": _text(body, "name").strip(),
                          "description": _text(body, "description", required=False)}
            except BadInput as e:
                return answer(request, 400, {"error": str(e)})
            show = ("project", lambda c: project_for(c, principal.user_id, fields["project_id"]))
            return await self.command(request, principal, PROJECT_CREATE, fields, show)

        @api_route(app, "/projects/<project_id>", ["GET"])
        @authed
        async def get_project(request: IRequest, principal: Principal, project_id: str) -> bytes:
            project = await read(views.project_detail, principal.user_id, project_id) if _is_id(project_id) else None
            if project is None:
                return answer(request, 404, {"error": "no such project"})
            return answer(request, 200, {"project": project})

        @api_route(app, "/projects/<project_id>", ["PATCH"])
        @authed
        async def rename_project(request: IRequest, principal: Principal, project_id: str) -> bytes:
            body = json_body(request)
            if isinstance(body, bytes):
                return body
            try:
                fields = {"project_id": project_id, "name": _text(body, "name").strip()}
            except BadInput as e:
                return answer(request, 400, {"error": str(e)})
            show = ("project", lambda c: project_for(c, principal.user_id, project_id))
            return await self.command(request, principal, PROJECT_RENAME, fields, show, ((project_id, "project"),))

        @api_route(app, "/projects/<project_id>", ["DELETE"])
        @authed
        async def delete_project(request: IRequest, principal: Principal, project_id: str) -> bytes:
            show = ("project", lambda c: project_for(c, principal.user_id, project_id))
            return await self.command(
                request, principal, PROJECT_DELETE, {"project_id": project_id}, show, ((project_id, "project"),)
            )

        @api_route(app, "/projects/<project_id>/members", ["POST"])
        @authed
        async def add_member(request: IRequest, principal: Principal, project_id: str) -> bytes:
            body = json_body(request)
            if isinstance(body, bytes):
                return body
            try:
                role = _text(body, "role", required=False, default="member")
                if "user_id" in body:
                    user_id = _text(body, "user_id")
                else:
                    found: str | None = await read(views.user_id, _text(body, "name"))
                    if found is None:
                        return answer(request, 404, {"error": "no such user"})
                    user_id = found
            except BadInput:
                return answer(request, 400, {"error": "send the user's 'name' (or 'user_id') and a 'role'"})
            fields = {"project_id": project_id, "user_id": user_id, "role": role}
            show = ("member", lambda c: views.member(c, principal.user_id, project_id, user_id))
            return await self.command(request, principal, MEMBER_ADD, fields, show, ((project_id, "project"),))

        @api_route(app, "/projects/<project_id>/members/<user_id>", ["DELETE"])
        @authed
        async def remove_member(request: IRequest, principal: Principal, project_id: str, user_id: str) -> bytes:
            fields = {"project_id": project_id, "user_id": user_id}
            show = ("member", lambda c: views.member(c, principal.user_id, project_id, user_id))
            return await self.command(
                request, principal, MEMBER_REMOVE, fields, show, ((project_id, "project"), (user_id, "member"))
            )

        @api_route(app, "/projects/<project_id>/members/<user_id>", ["PATCH"], legacy=False)
        @authed
        async def change_role(request: IRequest, principal: Principal, project_id: str, user_id: str) -> bytes:
            body = json_body(request)
            if isinstance(body, bytes):
                return body
            try:
                fields = {"project_id": project_id, "user_id": user_id, "role": _text(body, "role")}
            except BadInput as e:
                return answer(request, 400, {"error": str(e)})
            show = ("member", lambda c: views.member(c, principal.user_id, project_id, user_id))
            return await self.command(
                request, principal, MEMBER_ROLE, fields, show, ((project_id, "project"), (user_id, "member"))
            )

        # /api/v1/jobs lists jobs in full (relay.edge.jobs.routes).
        @api_route(app, "/jobs", ["GET"], current=False)
        @authed
        async def list_jobs(request: IRequest, principal: Principal) -> bytes:
            return await self._listing(request, principal, "jobs", jobs_for)

        @api_route(app, "/job-kinds", ["GET"])
        @authed
        async def list_job_kinds(request: IRequest, principal: Principal) -> bytes:
            kinds = await read(job_kinds)
            return answer(request, 200, {"kinds": [kind.public() for kind in kinds]})

        @api_route(app, "/jobs", ["POST"])
        @authed
        async def submit_job(request: IRequest, principal: Principal) -> bytes:
            body = json_body(request)
            if isinstance(body, bytes):
                return body
            try:
                fields = {"project_id": _text(body, "project_id"), "job_id": uuid.uuid4().hex,
                          "kind": _text(body, "kind"), "parameters": body.get("parameters", {}),
                          "inputs": body.get("inputs", [])}
            except BadInput as e:
                return answer(request, 400, {"error": str(e)})
            show = ("job", lambda c: views.one(jobs_for(c, principal.user_id, fields["project_id"]), fields["job_id"]))
            return await self.command(request, principal, JOB_SUBMIT, fields, show)

        @api_route(app, "/jobs/<job_id>/cancel", ["POST"])
        @authed
        async def cancel_job(request: IRequest, principal: Principal, job_id: str) -> bytes:
            show = ("job", lambda c: views.job(c, principal.user_id, job_id))
            return await self.command(request, principal, JOB_CANCEL, {"job_id": job_id}, show, ((job_id, "job"),))

        @api_route(app, "/files", ["GET"])
        @authed
        async def list_files(request: IRequest, principal: Principal) -> bytes:
            return await self._listing(request, principal, "files", views.files_with_cache)

        @api_route(app, "/files/<file_id>", ["DELETE"])
        @authed
        async def delete_file(request: IRequest, principal: Principal, file_id: str) -> bytes:
            show = ("file", lambda c: views.file(c, principal.user_id, file_id))
            return await self.command(request, principal, FILE_DELETE, {"file_id": file_id}, show, ((file_id, "file"),))

        @api_route(app, "/notices", ["GET"])
        @authed
        async def list_notices(request: IRequest, principal: Principal) -> bytes:
            return answer(request, 200, {"notices": await read(notices_for, principal.user_id)})

        @api_route(app, "/notices/<command_id>", ["DELETE"])
        @authed
        async def dismiss_notice(request: IRequest, principal: Principal, command_id: str) -> bytes:
            if not await self._db.run(dismiss, principal.user_id, command_id):
                return answer(request, 404, {"error": "no such notice"})
            return answer(request, 200, {"dismissed": command_id})

    async def _listing(
        self, request: IRequest, principal: Principal, what: str,
        view: Callable[[Any, str, str], list[dict[str, Any]]],
    ) -> bytes:
        """
        C{GET /api/jobs} or C{/api/files}: one project's (C{?project=}), or
        those of all the caller's projects.
        """
        given = request.args.get(b"project")  # type: ignore[attr-defined]
        project_id = None if not given else given[0].decode("utf-8", "replace")
        rows = await self._db.read(views.listing, principal.user_id, project_id, view)
        if rows is None:
            return answer(request, 404, {"error": "no such project"})
        return answer(request, 200, {what: rows})


def api_routes(
    app: Klein, identity: Identity, db: Database, issuer: CommandIssuer, hub: EventHub,
    wake: Callable[[], object], clock: IReactorTime, cpu: CpuRunner, *, link: LinkState,
    cost: ScryptCost = DEFAULT_COST, heartbeat: float = 15.0, streams_per_user: int = 8,
) -> EventStreams:
    """
    Add the API's routes (projects, members, jobs, files, notices,
    password, API keys, status, events, the OpenAPI document) to the
    edge's app.  Returns the event streams' service (with the status board
    its child): add it to the service tree so that stopping ends them.

    @param wake: the outbox's C{wake}.
    @param link: the link's state (L{relay.link.bridge.Bridge.link_state}).
    @param cpu: runs scrypt off the reactor thread.
    @param streams_per_user: open event streams one user may have.
    """
    json_routing_errors(app)
    openapi.routes(app)
    EdgeApi(identity, db, issuer, hub, wake).routes(app)
    ApiKeys(identity, db, issuer, hub, wake).routes(app)
    PasswordChange(identity, db, issuer, hub, wake, clock, cpu, cost=cost).routes(app)
    streams = EventStreams(hub, identity, clock, heartbeat=heartbeat, per_user=streams_per_user)
    streams.routes(app)
    board = StatusBoard(db, hub, clock, link, streams.users)
    board.routes(app, identity)
    board.setServiceParent(streams)
    return streams
