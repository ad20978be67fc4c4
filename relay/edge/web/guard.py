"""
What every JSON route of the edge's API does first and last: find the
caller (a session, with its CSRF token on state-changing requests, or an
API key) and answer any unexpected failure as a JSON 500, never a
traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from relay.edge.auth import CHANGE_PASSWORD_FIRST, Principal
from relay.edge.identity import Identity, json_answer

log = Logger()
P = ParamSpec("P")

answer = json_answer

_CSRF_PROBLEM = "missing or wrong CSRF token"


#: What a session whose password must change is told by every other route.
CHANGE_PASSWORD_REPLY = {"error": CHANGE_PASSWORD_FIRST, "code": "password_change_required"}


async def caller(
    identity: Identity, request: IRequest, *, before_password_change: bool = False
) -> Principal | bytes:
    """
    The request's principal, or the error answer (bytes) to return: 401
    without valid credentials, 403 for a session request without its CSRF
    token, 403 for a session whose one-time password is not changed yet
    (unless the route is one such a session may use:
    C{before_password_change}).
    """
    principal, problem = await identity.check(request)
    if principal is None:
        return answer(request, 403 if problem == _CSRF_PROBLEM else 401, {"error": problem or "not logged in"})
    if principal.must_change_password and not before_password_change:
        return answer(request, 403, CHANGE_PASSWORD_REPLY)
    return principal


def json_errors(
    route: Callable[P, Awaitable[bytes]],
) -> Callable[P, Awaitable[bytes]]:
    """
    Answer an unexpected exception in C{route} with a JSON 500 (and log
    it).  The request is the route's first argument.
    """

    @functools.wraps(route)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> bytes:
        try:
            return await route(*args, **kwargs)
        except CancelledError:
            raise  # the client went away; nothing to answer
        except Exception:
            log.failure("{route} failed", route=route.__name__)
            request: Any = args[0]
            return answer(request, 500, {"error": "internal error; it was logged"})

    return guarded


def authenticated(
    identity: Identity, *, before_password_change: bool = False
) -> Callable[[Callable[..., Awaitable[bytes]]], Callable[..., Awaitable[bytes]]]:
    """
    Decorate a route C{(request, principal, **url_parts)}: the caller is
    found first (or the answer is L{caller}'s refusal), and an unexpected
    failure is answered as a JSON 500 (L{json_errors}).
    """

    def decorate(route: Callable[..., Awaitable[bytes]]) -> Callable[..., Awaitable[bytes]]:
        @functools.wraps(route)
        async def with_caller(request: IRequest, *args: Any, **kwargs: Any) -> bytes:
            principal = await caller(identity, request, before_password_change=before_password_change)
            if isinstance(principal, bytes):
                return principal
            return await route(request, principal, *args, **kwargs)

        return json_errors(with_caller)

    return decorate
