"""
Fakes of the edge's identity seams (L{relay.edge.auth}) for tests: users
with API keys and session cookies, and who may write to which project.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.web.iweb import IRequest
from zope.interface import implementer

from relay.edge.auth import IAuthenticator, IProjectAccess, Principal


@implementer(IAuthenticator)
class FakeAuthenticator:
    """
    Knows the API keys and session cookies it was given.

    >>> auth = FakeAuthenticator()
    >>> alice = auth.add_user("alice", key="k-alice")
    """

    def __init__(self, cookie_name: str = "relay_session") -> None:
        self.cookie_name = cookie_name
        self._keys: dict[str, Principal] = {}
        self._sessions: dict[str, Principal] = {}

    def add_user(
        self, user_id: str, key: str | None = None, session: str | None = None, name: str = "",
        must_change_password: bool = False,
    ) -> Principal:
        if key is not None:
            self._keys[key] = Principal(user_id, name or user_id, "key")
        if session is not None:
            self._sessions[session] = Principal(
                user_id, name or user_id, "session", must_change_password=must_change_password
            )
        return Principal(user_id, name or user_id, "key")

    def revoke(self, key: str) -> None:
        self._keys.pop(key, None)

    def authenticate(self, request: IRequest) -> Deferred[Principal | None]:
        for value in request.requestHeaders.getRawHeaders(b"authorization") or []:
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return succeed(self._keys.get(token.strip()))
        cookie = request.getCookie(self.cookie_name.encode())
        if cookie is not None:
            return succeed(self._sessions.get(cookie.decode("latin-1")))
        return succeed(None)


@implementer(IProjectAccess)
class FakeProjectAccess:
    """
    Every user has a default project C{home-<user>} they may write to;
    C{grant} lets them write to others.
    """

    def __init__(self) -> None:
        self._writable: set[tuple[str, str]] = set()

    def grant(self, user_id: str, project_id: str) -> None:
        self._writable.add((user_id, project_id))

    def can_write(self, user_id: str, project_id: str) -> Deferred[bool]:
        return succeed(
            (user_id, project_id) in self._writable or project_id == f"home-{user_id}"
        )

    def default_project(self, user_id: str) -> Deferred[str]:
        return succeed(f"home-{user_id}")
