"""
The one shape of every error the edge's JSON API answers:
C{{"error": "<what to tell the person>", "code": "<code>"}}.

C{code} is always there.  A route that knows a more precise code
(C{password_change_required}, C{not_stored}, C{cloud_timeout}) gives it;
otherwise it follows from the status (L{CODES}).  Routing failures under
C{/api/} (no such route, a method the route does not take) are answered in
the same shape instead of werkzeug's HTML page.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

#: The code of an error by its HTTP status, when the route names none.
CODES: dict[int, str] = {
    400: "invalid",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    412: "precondition_failed",
    413: "too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    429: "too_many_requests",
    431: "too_large",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "timeout",
}

#: The HTTP status of each refusal code (L{relay.permissions.Refused.code}).
REFUSAL_STATUS = {"unauthenticated": 401, "forbidden": 403, "not_found": 404, "invalid": 400, "conflict": 409}

API_PREFIX = b"/api/"


def error_code(status: int) -> str:
    """
    The code for an error of C{status} that names none.
    """
    return CODES.get(status, "internal" if status >= 500 else "invalid")


def with_code(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """
    C{body} with its C{code}, if it is an error that lacks one.
    """
    if status >= 400 and "error" in body and "code" not in body:
        return {**body, "code": error_code(status)}
    return body


def error_json(status: int, message: str, code: str | None = None) -> bytes:
    """
    An error answer's body, encoded.
    """
    return json.dumps({"error": message, "code": code or error_code(status)}).encode()


def json_routing_errors(app: Klein) -> None:
    """
    Answer a request under C{/api/} that no route takes (404) or whose
    method its route does not take (405, with C{Allow}) in the API's error
    shape.  Other paths keep what the app does otherwise.
    """

    @app.handle_errors(NotFound, MethodNotAllowed)  # type: ignore[arg-type]
    def routing_error(request: IRequest, failure: Failure) -> bytes | Failure:
        path = request.path or b""
        if not (path.startswith(API_PREFIX) or path == API_PREFIX.rstrip(b"/")):
            return failure
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if failure.check(MethodNotAllowed):
            allowed = sorted(getattr(failure.value, "valid_methods", None) or [])
            request.setResponseCode(405)
            request.setHeader(b"allow", ", ".join(allowed).encode())
            method = request.method.decode("ascii", "replace")
            return error_json(405, f"{method} is not allowed here; allowed: {', '.join(allowed)}")
        request.setResponseCode(404)
        return error_json(404, "no such route")
