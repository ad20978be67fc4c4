"""
Who is asking, answered at the edge from the replica: passwords (scrypt
hashes) and API keys (SHA-256 of their secret) are checked against what the
cloud replicated, so logging in never waits on, or needs, the link.

Browsers get a session: a random token in a cookie (C{HttpOnly},
C{SameSite=Strict}, C{Secure} over TLS) stored only as its hash, and a CSRF
token that every state-changing request (anything but GET, HEAD, OPTIONS)
must echo in the C{X-CSRF-Token} header.  A session ends on logout, after
C{idle_timeout} without use, after C{max_age}, when its user is disabled, or
when the user's password changes (the session remembers a digest of the
hash it was opened with).  Tools send C{Authorization: Bearer <api key>};
a revoked key or a disabled user is refused as soon as the replica has the
event.

Routes: C{POST /api/v1/login} (JSON C{name}, C{password}), C{POST
/api/v1/logout}, C{GET /api/v1/me} (also under their deprecated C{/api/}
names).
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from relay import text
from relay.audit import AuditLog
from relay.credentials import (
    DEFAULT_COST,
    ScryptCost,
    dummy_hash,
    new_session_token,
    parse_api_key,
    password_hash_digest,
    session_token_hash,
    verify_api_key,
    verify_password,
)
from relay.db import Database, Schema
from relay.edge.auth import IAuthenticator, IProjectAccess, Principal
from relay.edge.login_throttle import LoginThrottle, Throttled
from relay.edge.web.errors import with_code
from relay.edge.web.routes import api_route
from relay.threads import Blocking

SCHEMA = Schema(
    "identity",
    [
        """
        CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            credential TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            seen_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX sessions_user ON sessions (user_id);
        """,
    ],
)

COOKIE = b"relay_session"
#: Under TLS: a browser accepts it only if Secure, for Path=/ and without
#: Domain, so neither plain HTTP nor a sibling domain can set or shadow it.
SECURE_COOKIE = b"__Host-relay_session"
CSRF_HEADER = b"x-csrf-token"
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
MAX_BODY = 64 * 1024

#: Runs a CPU-heavy function (scrypt) off the reactor thread.
CpuRunner = Blocking


@dataclass(frozen=True)
class Session:
    """
    A session just opened: C{token} goes into the cookie, C{csrf_token} to
    the page.
    """

    principal: Principal
    token: str
    csrf_token: str


class LoginRefused(Exception):
    """
    A login failed; C{str()} is what the person is told, C{status} the HTTP
    status.
    """

    def __init__(self, message: str, status: int = 401, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


@implementer(IAuthenticator, IProjectAccess)
class Identity:
    """
    Logins, sessions, API keys and project access, from the replica.

    @param cpu: runs password verification off the reactor (the tap passes
        a bounded thread pool; tests may run it inline).
    """

    log = Logger()

    def __init__(
        self, db: Database, clock: IReactorTime, cpu: CpuRunner, *,
        idle_timeout: float = 8 * 3600, max_age: float = 7 * 86400,
        throttle: LoginThrottle | None = None, cost: ScryptCost = DEFAULT_COST, audit: AuditLog | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._cpu = cpu
        self._idle_timeout = idle_timeout
        self._max_age = max_age
        self._throttle = throttle or LoginThrottle(clock)
        self._cost = cost
        self._dummy: str | None = None
        self._audit = audit

    # -- IAuthenticator --------------------------------------------------------

    def authenticate(self, request: IRequest) -> Deferred[Principal | None]:
        return Deferred.fromCoroutine(self._principal(request))

    async def _principal(self, request: IRequest) -> Principal | None:
        principal, _ = await self.check(request)
        return principal

    async def check(self, request: IRequest) -> tuple[Principal | None, str | None]:
        """
        The request's principal, or C{None} and why (for relay's own routes).
        """
        authorization = request.getHeader(b"authorization")
        if authorization is not None:
            return await self._api_key(authorization)
        token = request.getCookie(cookie_name(request))
        if not token:
            return None, "not logged in"
        try:
            token_text = token.decode("ascii")
        except UnicodeDecodeError:
            return None, "not logged in"
        now = self._clock.seconds()
        session = await self._db.read(_session, session_token_hash(token_text))
        if session is None:
            return None, "not logged in"
        if (
            now - session["seen_at"] > self._idle_timeout
            or now - session["created_at"] > self._max_age
            or session["disabled"]
            or not hmac.compare_digest(session["credential"], password_hash_digest(session["password_hash"]))
        ):
            return None, "the session has ended; log in again"
        if request.method not in SAFE_METHODS:
            given = request.getHeader(CSRF_HEADER) or b""
            if not hmac.compare_digest(given, session["csrf_token"].encode()):
                return None, "missing or wrong CSRF token"
        if now - session["seen_at"] > 60:
            await self._db.run(_touch, session["token_hash"], now)
        principal = Principal(
            session["user_id"], session["name"], "session", bool(session["is_admin"]),
            must_change_password=bool(session["must_change_password"]),
        )
        return principal, None

    async def _api_key(self, authorization: bytes) -> tuple[Principal | None, str | None]:
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        parsed = parse_api_key(token.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            return None, "malformed API key"
        key_id, secret = parsed
        row = await self._db.read(_key, key_id)
        if row is None or not verify_api_key(secret, row["key_hash"]):
            return None, "unknown API key"
        if row["revoked_at"] is not None:
            return None, "the API key was revoked"
        if row["disabled"]:
            return None, "the account is disabled"
        return Principal(row["user_id"], row["name"], "key", bool(row["is_admin"]), key_id), None

    # -- IProjectAccess --------------------------------------------------------

    def can_write(self, user_id: str, project_id: str) -> Deferred[bool]:
        return self._db.read(_can_write, user_id, project_id)

    def default_project(self, user_id: str) -> Deferred[str]:
        return self._db.read(_default_project, user_id)

    # -- sessions --------------------------------------------------------------

    def login(self, name: str, password: str, address: str | None = None) -> Deferred[Session]:
        """
        Check a password against the replica and open a session.

        @param address: the client's address (throttled as well as C{name}).
        @raise LoginRefused: wrong name or password, a disabled account, or
            (429, with C{retry_after}) too many failures lately.
        """
        return Deferred.fromCoroutine(self._login(name, password, address))

    async def _login(self, name: str, password: str, address: str | None = None) -> Session:
        try:
            return await self._checked_login(name, password, address)
        except LoginRefused as refused:
            # Throttled attempts are not each recorded: the throttle bounds
            # what an attacker can make this file grow by.
            if self._audit is not None and refused.status != 429:
                self._audit.record("login.failed", actor=name, address=address, status=refused.status,
                                   reason=str(refused))
            raise

    async def _checked_login(self, name: str, password: str, address: str | None) -> Session:
        try:
            # Reserved before the password is checked: concurrent guesses
            # count, and a refused one costs no scrypt.
            attempt = self._throttle.reserve(name, address)
        except Throttled as throttled:
            raise LoginRefused("too many failed logins; try again later", 429,
                               throttled.retry_after) from None
        try:
            user = await self._db.read(_user_by_name, name)
            if user is None:
                # Spend the same time as for a real user, so timing says nothing.
                if self._dummy is None:
                    self._dummy = await self._cpu(dummy_hash, self._cost)
                await self._cpu(verify_password, password, self._dummy)
                raise LoginRefused("wrong name or password")
            if not await self._cpu(verify_password, password, user["password_hash"]):
                raise LoginRefused("wrong name or password")
            attempt.succeeded()
        finally:
            attempt.failed()  # unless it succeeded
        if user["disabled"]:
            raise LoginRefused("this account is disabled", 403)
        token, token_hash = new_session_token()
        csrf = secrets.token_urlsafe(32)
        now = self._clock.seconds()
        await self._db.run(
            _open_session, token_hash, user["id"], csrf, password_hash_digest(user["password_hash"]), now,
            now - self._max_age, now - self._idle_timeout,
        )
        self.log.info("{name} logged in", name=name)
        if self._audit is not None:
            self._audit.record("login", actor=user["id"], name=name, address=address)
        principal = Principal(user["id"], user["name"], "session", bool(user["is_admin"]),
                              must_change_password=bool(user["must_change_password"]))
        return Session(principal, token, csrf)

    def logout(self, token: str) -> Deferred[None]:
        return self._db.run(_close_session, session_token_hash(token))

    # -- routes ----------------------------------------------------------------

    def routes(self, app: Klein) -> None:
        """
        Add C{/api/v1/login}, C{/api/v1/logout} and C{/api/v1/me} (and
        their deprecated C{/api/} names) to the edge's app.
        """

        @api_route(app, "/login", ["POST"])
        async def login(request: IRequest) -> bytes:
            body = json_body(request)
            if isinstance(body, bytes):
                return body
            name, password = body.get("name"), body.get("password")
            if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
                return json_answer(request, 400, {"error": "send a JSON object with 'name' and 'password'"})
            try:
                session = await self.login(name, password, _address(request))
            except LoginRefused as refused:
                if refused.retry_after is not None:
                    request.setHeader(b"retry-after", str(refused.retry_after).encode())
                return json_answer(request, refused.status, {"error": str(refused)})
            request.addCookie(  # type: ignore[call-arg]
                cookie_name(request), session.token.encode(), path=b"/", httpOnly=True, sameSite="strict",
                secure=request.isSecure(), max_age=str(int(self._max_age)).encode(),
            )
            return json_answer(request, 200, {"user": _user(session.principal), "csrf_token": session.csrf_token})

        @api_route(app, "/logout", ["POST"])
        async def logout(request: IRequest) -> bytes:
            principal, problem = await self.check(request)
            if principal is None or principal.via != "session":
                return json_answer(request, 401 if problem != "missing or wrong CSRF token" else 403,
                               {"error": problem or "not logged in with a session"})
            await self.logout(request.getCookie(cookie_name(request)).decode("ascii"))
            request.addCookie(  # type: ignore[call-arg]
                cookie_name(request), b"", path=b"/", httpOnly=True, sameSite="strict", secure=request.isSecure(),
                max_age=b"0",
            )
            return json_answer(request, 200, {"ok": True})

        @api_route(app, "/me", ["GET"])
        async def me(request: IRequest) -> bytes:
            principal, problem = await self.check(request)
            if principal is None:
                return json_answer(request, 401, {"error": problem})
            answer: dict[str, Any] = {"user": _user(principal), "via": principal.via}
            if principal.via == "session":
                token = request.getCookie(cookie_name(request)).decode("ascii")
                answer["csrf_token"] = await self._db.read(_csrf, session_token_hash(token))
            return json_answer(request, 200, answer)


def cookie_name(request: IRequest) -> bytes:
    """The session cookie's name: C{__Host-} prefixed under TLS."""
    return SECURE_COOKIE if request.isSecure() else COOKIE


def _address(request: IRequest) -> str | None:
    return getattr(request.getClientAddress(), "host", None)


def _user(principal: Principal) -> dict[str, Any]:
    return {
        "id": principal.user_id, "name": principal.name, "is_admin": principal.is_admin,
        "must_change_password": principal.must_change_password,
    }


def json_answer(request: IRequest, status: int, body: dict[str, Any]) -> bytes:
    """
    A JSON answer; an error gets its C{code} from the status when it names
    none (L{relay.edge.web.errors}).
    """
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(with_code(status, body)).encode()


def json_body(request: IRequest) -> dict[str, Any] | bytes:
    """
    The request's JSON object, or the error answer (bytes) to return.
    Requiring C{application/json} also keeps plain HTML forms (which cannot
    send it across origins) from posting here.
    """
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        return json_answer(request, 415, {"error": "send application/json"})
    data = request.content.read(MAX_BODY + 1)
    if len(data) > MAX_BODY:
        return json_answer(request, 413, {"error": "request body too large"})
    try:
        body = text.loads(data)
    except text.BadText as e:
        return json_answer(request, 400, {"error": str(e)})
    if not isinstance(body, dict):
        return json_answer(request, 400, {"error": "send a JSON object"})
    return body


# -- queries (on the database thread) -------------------------------------------


def _session(conn: Any, token_hash: str) -> Any:
    return conn.execute(
        "SELECT s.token_hash, s.user_id, s.csrf_token, s.credential, s.created_at, s.seen_at, "
        "u.name, u.is_admin, u.disabled, u.password_hash, u.must_change_password "
        "FROM sessions s JOIN replica_users u ON u.id = s.user_id WHERE s.token_hash = ?",
        (token_hash,),
    ).fetchone()


def _csrf(conn: Any, token_hash: str) -> str | None:
    row = conn.execute("SELECT csrf_token FROM sessions WHERE token_hash = ?", (token_hash,)).fetchone()
    return None if row is None else str(row[0])


def _touch(conn: Any, token_hash: str, now: float) -> None:
    conn.execute("UPDATE sessions SET seen_at = ? WHERE token_hash = ?", (now, token_hash))


def _key(conn: Any, key_id: str) -> Any:
    return conn.execute(
        "SELECT k.user_id, k.key_hash, k.revoked_at, u.name, u.is_admin, u.disabled "
        "FROM replica_api_keys k JOIN replica_users u ON u.id = k.user_id WHERE k.id = ?",
        (key_id,),
    ).fetchone()


def _user_by_name(conn: Any, name: str) -> Any:
    return conn.execute(
        "SELECT id, name, password_hash, is_admin, disabled, must_change_password FROM replica_users "
        "WHERE name = ?", (name,)
    ).fetchone()


def _open_session(
    conn: Any, token_hash: str, user_id: str, csrf: str, credential: str, now: float,
    created_before: float, seen_before: float,
) -> None:
    # Opening one is a good moment to forget the ones that ended.
    conn.execute("DELETE FROM sessions WHERE created_at < ? OR seen_at < ?", (created_before, seen_before))
    conn.execute(
        "INSERT INTO sessions (token_hash, user_id, csrf_token, credential, created_at, seen_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (token_hash, user_id, csrf, credential, now, now),
    )


def _close_session(conn: Any, token_hash: str) -> None:
    conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))


def _can_write(conn: Any, user_id: str, project_id: str) -> bool:
    row = conn.execute(
        "SELECT m.role, u.disabled FROM replica_members m JOIN replica_users u ON u.id = m.user_id "
        "WHERE m.project_id = ? AND m.user_id = ?",
        (project_id, user_id),
    ).fetchone()
    return row is not None and not row["disabled"] and row["role"] in ("owner", "member")


def _default_project(conn: Any, user_id: str) -> str:
    row = conn.execute(
        "SELECT id FROM replica_projects WHERE owner_id = ? AND is_default = 1", (user_id,)
    ).fetchone()
    if row is None:
        raise LookupError(f"user {user_id} has no default project (yet) in this edge's replica")
    return str(row[0])
