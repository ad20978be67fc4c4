"""
Who is asking, and what they may touch: the seams between the edge's web
routes and its identity store.

The routes (uploads, API, UI) depend only on these interfaces.  The real
implementation checks passwords, sessions and API keys against the replica
of the cloud registry; tests use the fake in L{relay.testing.auth}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from zope.interface import Interface

#: What a session whose password must change is told wherever it is refused.
CHANGE_PASSWORD_FIRST = "your password was chosen for you and works only once: choose a new one first"


@dataclass(frozen=True)
class Principal:
    """
    An authenticated user, as far as a request is concerned.

    @ivar via: C{"session"} for a browser session cookie (state-changing
        requests then need a CSRF token), C{"key"} for an API key.
    @ivar key_id: the API key's id when C{via} is C{"key"} (the cloud checks
        it is not revoked when the user's commands arrive).
    @ivar must_change_password: see below.
    """

    user_id: str
    name: str
    via: str
    is_admin: bool = False
    key_id: str | None = None
    #: A session of a user whose password someone else chose (generated,
    #: or the first admin's): until it is changed, the edge's routes refuse
    #: everything but changing it.
    must_change_password: bool = False


class IAuthenticator(Interface):
    """
    Finds the user behind a request: an C{Authorization: Bearer <api key>}
    header or a session cookie.
    """

    def authenticate(request: IRequest) -> Deferred[Principal | None]:
        """
        The request's user, or C{None} when it carries no valid credentials
        (the route then answers 401).  A disabled user or revoked key is
        C{None}.
        """


class IProjectAccess(Interface):
    """
    What a user may do with projects, from the edge's replica.
    """

    def can_write(user_id: str, project_id: str) -> Deferred[bool]:
        """
        Whether the user may add files to the project (owner or member, not
        viewer).
        """

    def default_project(user_id: str) -> Deferred[str]:
        """
        The project a file goes to when the client names none: the user's own
        default project.
        """
