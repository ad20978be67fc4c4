"""
Identity at the edge: logins against the replica's scrypt hashes (with the
link down: no link is involved), sessions with CSRF protection, API keys,
and changes made at the cloud (password, disabled, revoked key) taking
effect once their events arrive.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from zope.interface.verify import verifyObject

from relay.cloud import sync
from relay.credentials import hash_password
from relay.edge.auth import IAuthenticator, IProjectAccess, Principal
from relay.link.envelope import Envelope
from relay.testing.registry import TEST_COST, CloudSide, EdgeSide
from relay.testing.sync import FakeOutbox

BASE = "http://edge.example/"


class IdentityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        tmp = Path(self.mktemp())
        tmp.mkdir()
        self.cloud = CloudSide(tmp / "cloud.db", self.clock)
        self.edge = EdgeSide("e1", tmp / "edge.db", self.clock)
        self.addCleanup(self.cloud.close)
        self.addCleanup(self.edge.close)
        self.alice = self.cloud.add_user("alice", "alice's password")
        self.bob = self.cloud.add_user("bob", "bob's password")
        self.key = self.cloud.run(self.cloud.registry.create_key, self.alice["id"], "ci")
        self.sync()
        self.identity = self.edge.identity
        app = Klein()
        self.identity.routes(app)

        @app.route("/probe", methods=["GET", "POST"])
        async def probe(request: IRequest) -> bytes:
            principal = await self.identity.authenticate(request)
            if principal is None:
                request.setResponseCode(401)
                return b"{}"
            return json.dumps(principal.__dict__).encode()

        self.treq = StubTreq(app.resource())

    def sync(self) -> None:
        """
        Everything the cloud logged, to the edge.
        """
        applied = self.edge.db.run_now(lambda c: c.execute("SELECT applied FROM replica_sync").fetchone()[0])
        if applied == 0:
            self.edge.db.run_now(lambda c: c.execute("UPDATE replica_sync SET synced = 1"))
        head = self.cloud.run(sync.sequence)
        if head > applied:
            events = self.cloud.run(sync.events, applied, head)
            self.edge.inbox.deliver(
                Envelope(type="sync.events", source="cloud", time=0.0, body={"events": events, "head": head})
            )

    def request(self, method: str, path: str, body: Any = None, *, cookie: str | None = None,
                csrf: str | None = None, headers: dict[str, str] | None = None,
                content_type: str = "application/json") -> tuple[int, Any, Any]:
        all_headers = dict(headers or {})
        if cookie is not None:
            all_headers["Cookie"] = f"relay_session={cookie}"
        if csrf is not None:
            all_headers["X-CSRF-Token"] = csrf
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            all_headers["Content-Type"] = content_type
        d = self.treq.request(method, BASE + path.lstrip("/"), data=data,
                              headers={k: [v] for k, v in all_headers.items()})
        self.treq.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        self.treq.flush()
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = content
        return response.code, parsed, response.headers

    def login(self, name: str = "alice", password: str = "alice's password") -> tuple[str, str]:
        code, body, headers = self.request("POST", "/api/login", {"name": name, "password": password})
        self.assertEqual(code, 200, body)
        (cookie,) = headers.getRawHeaders("set-cookie")
        token = cookie.split(";")[0].split("=", 1)[1]
        return token, body["csrf_token"]

    # -- logins ----------------------------------------------------------------

    def test_interfaces(self) -> None:
        verifyObject(IAuthenticator, self.identity)
        verifyObject(IProjectAccess, self.identity)

    def test_login_sets_a_strict_httponly_cookie(self) -> None:
        code, body, headers = self.request("POST", "/api/login", {"name": "alice", "password": "alice's password"})
        self.assertEqual(code, 200)
        self.assertEqual(body["user"], {"id": self.alice["id"], "name": "alice", "is_admin": False, "must_change_password": False})
        self.assertTrue(body["csrf_token"])
        (cookie,) = headers.getRawHeaders("set-cookie")
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        self.assertEqual(attributes, {"path", "max-age", "httponly", "samesite"})
        self.assertIn("SameSite=strict", cookie)
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store"])

    def test_login_works_with_the_link_down(self) -> None:
        """
        Nothing in a login touches the link: no message is put, none is
        awaited (the fake link here is not even attached to anything).
        """
        token, _ = self.login()
        self.assertEqual(self.edge.db.run_now(FakeOutbox.peek), [])
        code, body, _ = self.request("GET", "/api/me", cookie=token)
        self.assertEqual((code, body["user"]["name"], body["via"]), (200, "alice", "session"))

    def test_wrong_password_and_unknown_user_look_the_same(self) -> None:
        wrong = self.request("POST", "/api/login", {"name": "alice", "password": "guess guess"})
        unknown = self.request("POST", "/api/login", {"name": "mallory", "password": "guess guess"})
        self.assertEqual(wrong[:2], (401, {"error": "wrong name or password", "code": "unauthenticated"}))
        self.assertEqual(unknown[:2], wrong[:2])
        self.assertIsNone(wrong[2].getRawHeaders("set-cookie"))

    def test_bad_requests(self) -> None:
        self.assertEqual(self.request("POST", "/api/login", b"name=alice", content_type="application/x-www-form-urlencoded")[0], 415)
        self.assertEqual(self.request("POST", "/api/login", b"{nope")[0], 400)
        self.assertEqual(self.request("POST", "/api/login", [1, 2])[0], 400)
        self.assertEqual(self.request("POST", "/api/login", {"name": "alice"})[0], 400)
        self.assertEqual(self.request("POST", "/api/login", b"x" * (70 * 1024))[0], 413)

    def test_throttled_after_repeated_failures(self) -> None:
        for _ in range(3):
            self.request("POST", "/api/login", {"name": "alice", "password": "guess guess"})
        code, body, headers = self.request("POST", "/api/login", {"name": "alice", "password": "alice's password"})
        self.assertEqual((code, headers.getRawHeaders("retry-after")), (429, ["1"]))
        # The address is held back too, whichever name it tries.
        self.assertEqual(self.request("POST", "/api/login", {"name": "bob", "password": "bob's password"})[0], 429)
        self.clock.advance(1)
        self.login()

    # -- sessions and CSRF -----------------------------------------------------

    def test_me(self) -> None:
        self.assertEqual(self.request("GET", "/api/me")[:2], (401, {"error": "not logged in", "code": "unauthenticated"}))
        token, csrf = self.login()
        code, body, _ = self.request("GET", "/api/me", cookie=token)
        self.assertEqual((code, body["csrf_token"]), (200, csrf))
        self.assertEqual(self.request("GET", "/api/me", cookie="forged")[0], 401)

    def test_state_changing_requests_need_the_csrf_token(self) -> None:
        token, csrf = self.login()
        self.assertEqual(self.request("GET", "/probe", cookie=token)[0], 200)
        self.assertEqual(self.request("POST", "/probe", cookie=token)[0], 401)
        self.assertEqual(self.request("POST", "/probe", cookie=token, csrf="wrong")[0], 401)
        code, body, _ = self.request("POST", "/probe", cookie=token, csrf=csrf)
        self.assertEqual((code, body["via"], body["user_id"]), (200, "session", self.alice["id"]))
        other, _ = self.login("bob", "bob's password")
        self.assertEqual(self.request("POST", "/probe", cookie=other, csrf=csrf)[0], 401, "tokens are per session")

    def test_logout(self) -> None:
        token, csrf = self.login()
        self.assertEqual(self.request("POST", "/api/logout", cookie=token)[0], 403)
        code, _, headers = self.request("POST", "/api/logout", cookie=token, csrf=csrf)
        self.assertEqual(code, 200)
        (cleared,) = headers.getRawHeaders("set-cookie")
        self.assertTrue(cleared.startswith("relay_session=;"))
        self.assertIn("Max-Age=0", cleared)
        self.assertEqual(self.request("GET", "/api/me", cookie=token)[0], 401)

    def test_idle_and_old_sessions_end(self) -> None:
        token, _ = self.login()
        self.clock.advance(8 * 3600 + 1)
        self.assertEqual(self.request("GET", "/api/me", cookie=token)[:2], (401, {"error": "the session has ended; log in again", "code": "unauthenticated"}))
        token, _ = self.login()
        for _ in range(25):
            self.clock.advance(7 * 3600)
            self.request("GET", "/api/me", cookie=token)
        self.assertEqual(self.request("GET", "/api/me", cookie=token)[0], 401, "at most 7 days")

    # -- changes made at the cloud ---------------------------------------------

    def test_password_change_at_the_cloud_takes_effect_after_sync(self) -> None:
        token, _ = self.login()
        self.cloud.run(self.cloud.registry.set_password, self.alice["id"], hash_password("a new password", TEST_COST))
        # Not synced yet: the edge still knows the old hash.
        self.login()
        self.sync()
        self.assertEqual(self.request("POST", "/api/login", {"name": "alice", "password": "alice's password"})[0], 401)
        self.login("alice", "a new password")
        self.assertEqual(self.request("GET", "/api/me", cookie=token)[0], 401, "sessions opened with the old password end")

    def test_disabled_at_the_cloud(self) -> None:
        token, _ = self.login()
        self.cloud.run(self.cloud.registry.set_disabled, self.alice["id"], True)
        self.sync()
        self.assertEqual(self.request("GET", "/api/me", cookie=token)[0], 401)
        self.assertEqual(self.request("POST", "/api/login", {"name": "alice", "password": "alice's password"})[:2],
                         (403, {"error": "this account is disabled", "code": "forbidden"}))
        self.assertEqual(self.request("GET", "/probe", headers={"Authorization": f"Bearer {self.key.token}"})[0], 401)

    # -- API keys --------------------------------------------------------------

    def test_api_keys(self) -> None:
        code, body, _ = self.request("POST", "/probe", headers={"Authorization": f"Bearer {self.key.token}"})
        self.assertEqual(code, 200, "no CSRF token needed: a key is not an ambient credential")
        self.assertEqual((body["via"], body["key_id"], body["name"]), ("key", self.key.key_id, "alice"))
        forged = self.key.token[:-4] + "AAAA"
        for bad in (forged, "relay_nope", "x"):
            self.assertEqual(self.request("GET", "/probe", headers={"Authorization": f"Bearer {bad}"})[0], 401)
        self.assertEqual(self.request("GET", "/probe", headers={"Authorization": f"Basic {self.key.token}"})[0], 401)

    def test_revoked_key_is_refused_once_the_event_arrives(self) -> None:
        self.cloud.run(self.cloud.registry.revoke_key, self.key.key_id)
        self.assertEqual(self.request("GET", "/probe", headers={"Authorization": f"Bearer {self.key.token}"})[0], 200)
        self.sync()
        code, body, _ = self.request("GET", "/api/me", headers={"Authorization": f"Bearer {self.key.token}"})
        self.assertEqual((code, body), (401, {"error": "the API key was revoked", "code": "unauthenticated"}))

    # -- project access --------------------------------------------------------

    def result(self, d: Deferred[Any]) -> Any:
        return self.successResultOf(d)

    def test_project_access(self) -> None:
        r = self.cloud.registry
        project = self.cloud.run(r.create_project, self.alice["id"], "Apollo")
        carol = self.cloud.add_user("carol", "carol's password")
        self.cloud.run(r.set_member, project, self.bob["id"], "member")
        self.cloud.run(r.set_member, project, carol["id"], "viewer")
        self.sync()
        can = lambda user: self.result(self.identity.can_write(user["id"], project))  # noqa: E731
        self.assertEqual([can(self.alice), can(self.bob), can(carol)], [True, True, False])
        dave = self.cloud.add_user("dave", "dave's password")
        self.sync()
        self.assertFalse(can(dave))
        self.cloud.run(r.set_disabled, self.bob["id"], True)
        self.sync()
        self.assertFalse(can(self.bob))
        home = self.cloud.default_project(self.alice["id"])
        self.assertEqual(self.result(self.identity.default_project(self.alice["id"])), home)
        self.failureResultOf(self.identity.default_project("0" * 32), LookupError)

    def test_principal_for_routes(self) -> None:
        token, _ = self.login()
        principal = self.result(self.identity.authenticate(_FakeRequest(b"GET", cookie=token.encode())))
        self.assertEqual(principal, Principal(self.alice["id"], "alice", "session", False))


class _FakeRequest:
    """
    Just enough of a request for L{Identity.authenticate}.
    """

    def __init__(self, method: bytes, cookie: bytes | None = None) -> None:
        self.method = method
        self._cookie = cookie

    def getHeader(self, name: bytes) -> bytes | None:
        return None

    def getCookie(self, name: bytes) -> bytes | None:
        return self._cookie

    def isSecure(self) -> bool:
        return False
