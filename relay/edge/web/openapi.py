"""
The API's OpenAPI 3.1 document, written by hand (C{GET
/api/v1/openapi.json}).  A unit test checks it against the routes the edge
really has (every C{/api/v1} route documented with its methods, nothing
documented that is not there), and schemathesis checks the answers of a
real edge against it.  C{docs/api.md} says the same for people.

Every operation's C{default} answer is the one error shape,
C{{"error", "code"}}.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from relay.edge.web.routes import V1
from relay.replication import FILE_KINDS, JOB_STATES, ROLES

VERSION = "1.0.0"

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


_STRING = {"type": "string"}
_NUMBER = {"type": "number"}
_INTEGER = {"type": "integer"}
_TIME = _nullable(_NUMBER)
_PENDING = _nullable(_STRING)

SCHEMAS: dict[str, Any] = {
    "Error": {
        **_object({
            "error": {"type": "string", "description": "what to tell the person"},
            "code": {"type": "string", "description": "what went wrong, for programs (docs/api.md)"},
        }),
    },
    "User": _object({"id": _STRING, "name": _STRING, "is_admin": {"type": "boolean"},
                     "must_change_password": {"type": "boolean"}}),
    "Me": _object({"user": _ref("User"), "via": {"enum": ["session", "key"]}, "csrf_token": _STRING},
                  optional=("csrf_token",)),
    "Login": _object({"user": _ref("User"), "csrf_token": _STRING}),
    "Member": _object({"user_id": _STRING, "name": _nullable(_STRING), "role": {"enum": list(ROLES)},
                       "pending": _PENDING}),
    "Project": _object({
        "id": _STRING, "name": _STRING, "description": _STRING, "owner_id": _STRING,
        "is_default": {"type": ["integer", "boolean"]}, "role": {"enum": list(ROLES)}, "pending": _PENDING,
        "members": {"type": "array", "items": _ref("Member")},
        "files": {"type": "array", "items": _ref("File")},
        "jobs": {"type": "array", "items": _ref("Job")},
        "file_count": _INTEGER, "job_count": _INTEGER,
    }, optional=("members", "files", "jobs", "file_count", "job_count")),
    "Job": _object({
        "id": _STRING, "project_id": _STRING, "kind": _STRING, "state": {"enum": list(JOB_STATES)},
        "progress": _NUMBER, "submitted_by": _STRING, "created_at": _TIME, "pending": _PENDING,
        "attempts": _INTEGER, "started_at": _TIME, "finished_at": _TIME, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _STRING},
        "results": {"type": "array", "items": _object({
            "id": _STRING, "name": _nullable(_STRING), "size": _nullable(_INTEGER),
            "sha256": _nullable(_STRING), "state": _nullable(_STRING)})},
        "error": _nullable(_STRING),
        "log": _nullable(_object({"attempt": _INTEGER, "start": _INTEGER, "end": _INTEGER,
                                  "complete": {"type": "boolean"}})),
    }, optional=("project_id", "attempts", "started_at", "finished_at", "parameters", "inputs", "results",
                 "error", "log")),
    "File": _object({
        "id": _STRING, "project_id": _STRING, "name": _STRING, "size": _INTEGER, "sha256": _nullable(_STRING),
        "state": _STRING, "kind": {"enum": list(FILE_KINDS)}, "job_id": _nullable(_STRING),
        "created_at": _NUMBER, "updated_at": _NUMBER, "pending": _PENDING,
        "cache": _object({"state": {"enum": ["cached", "fetching", "remote"]}, "fetched": _INTEGER,
                          "size": _INTEGER}, optional=("fetched", "size")),
    }, optional=("project_id", "cache")),
    "Notice": _object({"command_id": _STRING, "type": _STRING, "reason": _nullable(_STRING),
                       "code": _nullable(_STRING), "created_at": _NUMBER}),
    "Kind": _object({"name": _STRING, "description": _STRING, "parameters": {"type": "object"},
                     "min_inputs": _INTEGER, "max_inputs": _INTEGER, "timeout": _NUMBER}),
    "Key": _object({"id": _STRING, "name": _STRING, "created_at": _NUMBER,
                    "pending": _nullable({"enum": ["create", "revoke"]})}),
    "Upload": _object({
        "id": _STRING, "url": _STRING, "filename": _STRING, "filetype": _STRING, "project": _STRING,
        "length": _nullable(_INTEGER), "offset": _INTEGER, "state": _STRING, "progress": _NUMBER,
        "transferred": _INTEGER, "created": _STRING, "updated": _STRING, "expires": _nullable(_STRING),
        "error": _nullable(_STRING),
    }),
    "Status": _object({
        "link": _object({"state": {"enum": ["up", "down", "connecting"]}, "since": _nullable(_STRING)}),
        "pending": _object({
            "commands": _INTEGER, "bytes": _INTEGER,
            "items": {"type": "array", "items": _object({
                "kind": {"enum": ["command", "upload"]}, "id": _STRING, "label": _STRING, "state": _STRING,
                "since": _nullable(_STRING)})},
        }),
    }),
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _answer(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, **(_json(schema) if schema is not None else {})}


def _accepted(key: str, schema: dict[str, Any], **more: Any) -> dict[str, Any]:
    return _answer("accepted: the command is pending", _object(
        {"command_id": _STRING, "state": {"const": "pending"}, key: _nullable(schema), **more}))


def _body(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"required": True, **_json(_object(properties, optional))}


def _operation(
    summary: str, answers: dict[str, Any], *, body: dict[str, Any] | None = None, public: bool = False,
    parameters: list[dict[str, Any]] | None = None, deprecated_name: bool = True, tag: str = "",
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {**answers, "default": _answer("an error", _ref("Error"))},
    }
    if tag:
        operation["tags"] = [tag]
    if body is not None:
        operation["requestBody"] = body
    if parameters:
        operation["parameters"] = parameters
    if public:
        operation["security"] = []
    if deprecated_name:
        operation["description"] = "Also answered under its deprecated /api/ name (for one release)."
    return operation


def _path(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STRING}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_PROJECT_QUERY = _query("project", _STRING, "one project's only")
_LIST = lambda key, item: _answer("the list", _object({key: {"type": "array", "items": _ref(item)}}))  # noqa: E731
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_OPTIONS = {"204": _answer("CORS preflight")}


def paths() -> dict[str, Any]:
    """
    The document's paths (each under C{/api/v1}).
    """
    project_id, user_id, job_id, file_id = (_path(n) for n in ("project_id", "user_id", "job_id", "file_id"))
    project = _ref("Project")
    table: dict[str, dict[str, Any]] = {
        "/login": {"post": _operation("log in: a session cookie and its CSRF token", {
            "200": _answer("logged in", _ref("Login"))}, body=_body({"name": _STRING, "password": _STRING}),
            public=True, tag="identity")},
        "/logout": {"post": _operation("end this session", {"200": _answer("logged out", _object(
            {"ok": {"const": True}}))}, tag="identity")},
        "/me": {"get": _operation("who is asking", {"200": _answer("the caller", _ref("Me"))}, tag="identity")},
        "/password": {"post": _operation("change one's password (a user.password command)", {
            "202": _answer("accepted", _object({"command_id": _STRING, "state": {"const": "pending"},
                                                "note": _STRING}))},
            body=_body({"current_password": _STRING, "new_password": _STRING}), tag="identity")},
        "/projects": {
            "get": _operation("the caller's projects, with members", {"200": _LIST("projects", "Project")},
                              tag="projects"),
            "post": _operation("create a project", {"202": {
                **_accepted("project", project),
                "links": {"GetProject": {"operationId": "getProject",
                                         "parameters": {"project_id": "$response.body#/project/id"}}},
            }}, body=_body({"name": _NAME, "description": {"type": "string", "maxLength": 2000}},
                           optional=("description",)), tag="projects"),
        },
        "/projects/{project_id}": {
            "parameters": [project_id],
            "get": {**_operation("one project with its members, files and jobs", {
                "200": _answer("the project", _object({"project": project}))}, tag="projects"),
                "operationId": "getProject"},
            "patch": _operation("rename a project (owner)", {"202": _accepted("project", project)},
                                body=_body({"name": _NAME}), tag="projects"),
            "delete": _operation("delete a project (owner; not a default project)", {
                "202": _accepted("project", project)}, tag="projects"),
        },
        "/projects/{project_id}/members": {
            "parameters": [project_id],
            "post": _operation("add a member (owner), by name or user id", {
                "202": _accepted("member", _ref("Member"))},
                body=_body({"name": _STRING, "user_id": _STRING, "role": {"enum": ["member", "viewer"]}},
                           optional=("name", "user_id", "role")), tag="projects"),
        },
        "/projects/{project_id}/members/{user_id}": {
            "parameters": [project_id, user_id],
            "patch": _operation("change a member's role (owner; 'owner' hands the project over)", {
                "202": _accepted("member", _ref("Member"))}, body=_body({"role": {"enum": list(ROLES)}}),
                deprecated_name=False, tag="projects"),
            "delete": _operation("remove a member (owner; anyone but the owner may leave)", {
                "202": _accepted("member", _ref("Member"))}, tag="projects"),
        },
        "/jobs": {
            "get": _operation("jobs, in full, of the caller's projects or one", {"200": _LIST("jobs", "Job")},
                              parameters=[_PROJECT_QUERY], deprecated_name=False, tag="jobs"),
            "post": _operation("submit a job", {"202": {
                **_accepted("job", _ref("Job")),
                "links": {"GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/job/id"}}},
            }}, body=_body({"project_id": _STRING, "kind": _STRING, "parameters": {"type": "object"},
                            "inputs": {"type": "array", "items": _STRING}},
                           optional=("parameters", "inputs")), tag="jobs"),
        },
        "/jobs/{job_id}": {
            "parameters": [job_id],
            "get": {**_operation("one job in full", {"200": _answer("the job", _object({"job": _ref("Job")}))},
                                 tag="jobs"), "operationId": "getJob"},
        },
        "/jobs/{job_id}/log": {
            "parameters": [job_id],
            "get": _operation("the log's bytes the edge holds, from an offset", {
                "200": {"description": "the bytes", "content": {"text/plain": {"schema": _STRING}}},
                "416": _answer("the offset is past the end held", {
                    **_ref("Error"), "properties": {"start": _INTEGER, "end": _INTEGER}}),
            }, parameters=[_query("offset", {"type": "integer", "minimum": 0}, "the first byte wanted")],
                tag="jobs"),
        },
        "/jobs/{job_id}/cancel": {
            "parameters": [job_id],
            "post": _operation("cancel a job", {"202": _accepted("job", _ref("Job"))}, tag="jobs"),
        },
        "/job-kinds": {"get": _operation("the kinds of job the cloud runs", {"200": _LIST("kinds", "Kind")},
                                         tag="jobs")},
        "/files": {"get": _operation("files of the caller's projects or one, with this edge's cache state", {
            "200": _LIST("files", "File")}, parameters=[_PROJECT_QUERY], tag="files")},
        "/files/{file_id}": {
            "parameters": [file_id],
            "delete": _operation("delete a file", {"202": _accepted("file", _ref("File"))}, tag="files"),
        },
        "/files/{file_id}/content": {
            "parameters": [file_id],
            "get": _operation("the file's bytes (Range, conditional requests; docs/api.md)", {
                "200": {"description": "the bytes", "content": {"*/*": {}}},
                "206": {"description": "the range asked for", "content": {"*/*": {}}},
                "304": {"description": "not modified"},
            }, tag="files"),
            "head": _operation("the file's headers", {"200": {"description": "the headers"},
                                                      "206": {"description": "the range's headers"},
                                                      "304": {"description": "not modified"}}, tag="files"),
        },
        "/notices": {"get": _operation("the caller's commands the cloud refused", {
            "200": _LIST("notices", "Notice")}, tag="notices")},
        "/notices/{command_id}": {
            "parameters": [_path("command_id")],
            "delete": _operation("dismiss a notice", {"200": _answer("dismissed", _object(
                {"dismissed": _STRING}))}, tag="notices"),
        },
        "/uploads": {
            "get": _operation("the caller's uploads at this edge", {"200": _LIST("uploads", "Upload")},
                              tag="uploads"),
            "options": _operation("CORS preflight", _OPTIONS, public=True, tag="uploads"),
        },
        "/uploads/{upload_id}": {
            "parameters": [_path("upload_id")],
            "get": _operation("one upload", {"200": _answer("the upload", _ref("Upload"))}, tag="uploads"),
            "options": _operation("CORS preflight", _OPTIONS, public=True, tag="uploads"),
        },
        "/uploads/{upload_id}/retry": {
            "parameters": [_path("upload_id")],
            "post": _operation("retry a failed transfer", {"202": _answer("retrying", _ref("Upload"))},
                               tag="uploads"),
            "options": _operation("CORS preflight", _OPTIONS, public=True, tag="uploads"),
        },
        "/keys": {
            "get": _operation("the caller's API keys (never a secret)", {"200": _LIST("keys", "Key")},
                              deprecated_name=False, tag="keys"),
            "post": _operation("a new API key: its secret is in this answer only", {"202": {
                **_accepted("key", _ref("Key"), secret={"type": "string", "pattern": "^relay_[0-9a-f]{16}_"}),
                "links": {"RevokeKey": {"operationId": "revokeKey",
                                        "parameters": {"key_id": "$response.body#/key/id"}}},
            }}, body=_body({"name": _NAME}), deprecated_name=False, tag="keys"),
        },
        "/keys/{key_id}": {
            "parameters": [_path("key_id")],
            "delete": {**_operation("revoke an API key", {"202": _accepted("key", _ref("Key"))},
                                    deprecated_name=False, tag="keys"), "operationId": "revokeKey"},
        },
        "/status": {"get": _operation("the link and what of the caller's waits for it", {
            "200": _answer("the status", _ref("Status"))}, deprecated_name=False, tag="status")},
        "/events": {"get": _operation("live events, as Server-Sent Events (docs/api.md)", {
            "200": {"description": "the stream", "content": {"text/event-stream": {"schema": _STRING}}}},
            tag="events")},
        "/openapi.json": {"get": _operation("this document", {"200": _answer("the document", {"type": "object"})},
                                            public=True, deprecated_name=False, tag="meta")},
    }
    return {V1 + path: item for path, item in table.items()}


def document() -> dict[str, Any]:
    """
    The whole OpenAPI 3.1 document.
    """
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay edge API",
            "version": VERSION,
            "description": "The edge's JSON API: reads from the edge's replica, changes as commands "
                           "answered 202 and decided by the cloud. docs/api.md tells it in full.",
        },
        "servers": [{"url": "/"}],
        "security": [{"session": [], "csrf": []}, {"bearer": []}],
        "paths": paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "relay_session",
                            "description": "from POST /api/v1/login (__Host-relay_session under TLS)"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token",
                         "description": "the session's CSRF token, on every request but GET/HEAD/OPTIONS"},
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API key: relay_<key id>_<secret>"},
            },
        },
    }


def routes(app: Klein) -> None:
    """
    Serve the document at C{/api/v1/openapi.json} (to anyone: it holds no
    secret).
    """
    encoded = json.dumps(document()).encode()

    @app.route(V1 + "/openapi.json", methods=["GET"], endpoint="v1 openapi")
    def openapi(request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache")
        return encoded
