"""
The API under C{/api/v1/}: every route there, the old C{/api/} names
answering the same with C{Deprecation}, and one error shape
(C{{"error", "code"}}, code always present) for every failure, routing
ones included.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from relay.edge.jobs.routes import JobRoutes
from relay.edge.jobs.tail import LogTails
from relay.edge.web.errors import CODES, error_code, with_code
from relay.edge.web.site import EdgeSite, ListenerLimits
from tests.edge.web.world import ApiWorld


def _without_ids(body: Any) -> Any:
    """An answer without what differs between two equal answers (a new command's id)."""
    if isinstance(body, dict):
        return {k: _without_ids(v) for k, v in body.items() if k not in ("command_id", "csrf_token")}
    if isinstance(body, list):
        return [_without_ids(v) for v in body]
    return body


class VersionedRouteTests(ApiWorld):
    def test_reads_answer_the_same_under_both_names(self) -> None:
        for path in ("/projects", f"/projects/{self.home}", "/files", "/notices", "/me", "/job-kinds",
                     f"/files?project={self.home}"):
            new = self.request("GET", "/api/v1" + path, user="alice")
            self.assertIsNone(self.headers.getRawHeaders("deprecation"), path)
            old = self.request("GET", "/api" + path, user="alice")
            self.assertEqual(new, old, path)
            self.assertEqual(new[0], 200, path)
            self.assertEqual(self.headers.getRawHeaders("deprecation"), ["true"], path)
            (link,) = self.headers.getRawHeaders("link")
            self.assertEqual(link, f'</api/v1{path.split("?")[0]}>; rel="successor-version"')

    def test_commands_under_v1(self) -> None:
        code, body = self.request("POST", "/api/v1/projects", {"name": "Zeus"}, user="alice")
        self.assertEqual((code, body["project"]["pending"]), (202, "create"))
        zeus = body["project"]["id"]
        self.round_trip()
        code, body = self.request("PATCH", f"/api/v1/projects/{zeus}", {"name": "Hera"}, user="alice")
        self.assertEqual((code, body["project"]["name"], body["project"]["pending"]), (202, "Hera", "rename"))
        self.round_trip()
        code, body = self.request("GET", f"/api/v1/projects/{zeus}", user="alice")
        self.assertEqual((body["project"]["name"], body["project"]["pending"]), ("Hera", None))
        code, body = self.request("POST", f"/api/v1/projects/{zeus}/members", {"name": "carol"}, user="alice")
        self.assertEqual((code, body["member"]["pending"]), (202, "add"))
        self.round_trip()
        code, body = self.request("DELETE", f"/api/v1/projects/{zeus}/members/{self.carol['id']}", user="alice")
        self.assertEqual((code, body["member"]["pending"]), (202, "remove"))
        self.round_trip()
        code, body = self.request("DELETE", f"/api/v1/projects/{zeus}", user="alice")
        self.assertEqual((code, body["project"]["pending"]), (202, "delete"))
        self.round_trip()
        self.assertEqual(self.request("GET", f"/api/v1/projects/{zeus}", user="alice")[0], 404)
        self.assertEqual(self.stored(), (0, 0))

    def test_login_and_logout_under_v1(self) -> None:
        code, body = self.request("POST", "/api/v1/login", {"name": "bob", "password": "bob's password"})
        self.assertEqual((code, body["user"]["name"]), (200, "bob"))
        (cookie,) = self.headers.getRawHeaders("set-cookie")
        token = cookie.split(";")[0].split("=", 1)[1]
        headers = {"Cookie": f"relay_session={token}", "X-CSRF-Token": body["csrf_token"]}
        self.assertEqual(self.request("GET", "/api/v1/me", headers=headers)[0], 200)
        self.assertEqual(self.request("POST", "/api/v1/logout", headers=headers)[0], 200)
        code, body = self.request("GET", "/api/v1/me", headers=headers)
        self.assertEqual((code, body), (401, {"error": "not logged in", "code": "unauthenticated"}))


class ErrorShapeTests(ApiWorld):
    def assert_error(self, answer: tuple[int, Any], status: int, code: str) -> None:
        self.assertEqual((answer[0], answer[1].get("code")), (status, code), answer)
        self.assertEqual(set(answer[1]) - {"error", "code"}, set(), answer)
        self.assertIsInstance(answer[1]["error"], str)

    def test_each_failure_has_its_status_and_code(self) -> None:
        other = "0" * 32
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"method": "GET", "path": "/api/v1/projects"}, 401, "unauthenticated"),
            ({"method": "GET", "path": "/api/v1/projects", "bearer": "nonsense"}, 401, "unauthenticated"),
            ({"method": "POST", "path": "/api/v1/projects", "body": {"name": "x"}, "user": "alice",
              "csrf": False}, 403, "forbidden"),
            ({"method": "PATCH", "path": f"/api/v1/projects/{self.home}", "body": {"name": "x"}, "user": "bob"},
             403, "forbidden"),
            ({"method": "GET", "path": f"/api/v1/projects/{self.home}", "user": "carol"}, 404, "not_found"),
            ({"method": "GET", "path": f"/api/v1/projects/{other}", "user": "alice"}, 404, "not_found"),
            ({"method": "POST", "path": "/api/v1/projects", "body": b"{", "user": "alice"}, 400, "invalid"),
            ({"method": "POST", "path": "/api/v1/projects", "body": {"name": 3}, "user": "alice"}, 400, "invalid"),
            ({"method": "POST", "path": "/api/v1/projects", "body": b"name=x", "user": "alice",
              "content_type": "text/plain"}, 415, "unsupported_media_type"),
            ({"method": "POST", "path": "/api/v1/projects", "body": {"name": "x" * 70_000}, "user": "alice"},
             413, "too_large"),
            ({"method": "DELETE", "path": f"/api/v1/projects/{self.home}", "user": "alice"}, 409, "conflict"),
            ({"method": "GET", "path": "/api/v1/nothing-here", "user": "alice"}, 404, "not_found"),
            ({"method": "GET", "path": "/api/nothing-here"}, 404, "not_found"),
            ({"method": "PUT", "path": "/api/v1/projects", "user": "alice"}, 405, "method_not_allowed"),
            ({"method": "POST", "path": "/api/v1/password", "body": {"current_password": "wrong",
              "new_password": "a long enough one"}, "user": "alice"}, 403, "forbidden"),
        ]
        for kwargs, status, code in cases:
            kwargs = dict(kwargs)
            answer = self.request(kwargs.pop("method"), kwargs.pop("path"), kwargs.pop("body", None), **kwargs)
            self.assert_error(answer, status, code)
        self.assertEqual(self.stored(), (0, 0))

    def test_method_not_allowed_names_the_methods(self) -> None:
        self.assert_error(self.request("PUT", f"/api/v1/projects/{self.home}", user="alice"), 405,
                          "method_not_allowed")
        self.assertEqual(self.headers.getRawHeaders("allow"), ["DELETE, GET, HEAD, PATCH"])

    def test_too_many_wrong_passwords_is_429(self) -> None:
        for _ in range(3):
            self.request("POST", "/api/v1/login", {"name": "alice", "password": "wrong"})
        answer = self.request("POST", "/api/v1/login", {"name": "alice", "password": "wrong"})
        self.assert_error(answer, 429, "too_many_requests")
        self.assertIsNotNone(self.headers.getRawHeaders("retry-after"))

    def test_too_many_streams_is_429(self) -> None:
        self.streams._per_user = 0
        self.assert_error(self.request("GET", "/api/v1/events", user="alice"), 429, "too_many_requests")

    def test_unexpected_failure_is_internal(self) -> None:
        from twisted.internet.defer import fail

        self.session("alice")
        self.patch(self.edge.db, "read", lambda *a: fail(RuntimeError("disk on fire")))
        self.assert_error(self.request("GET", "/api/v1/projects", user="alice"), 500, "internal")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class CodeTableTests(SynchronousTestCase):
    def test_every_error_status_has_a_code(self) -> None:
        for status in range(400, 600):
            self.assertTrue(error_code(status))
        self.assertEqual(error_code(599), "internal")
        self.assertEqual(with_code(404, {"error": "x"}), {"error": "x", "code": "not_found"})
        self.assertEqual(with_code(409, {"error": "x", "code": "not_stored"})["code"], "not_stored")
        self.assertEqual(with_code(200, {"a": 1}), {"a": 1})
        self.assertEqual(CODES[415], "unsupported_media_type")


class SiteRefusalTests(SynchronousTestCase):
    """
    What the listener refuses before any route sees it has the same shape.
    """

    def refuse(self, data: bytes) -> tuple[int, dict[str, Any]]:
        site = EdgeSite(Resource(), ListenerLimits(max_body=100))
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(data)
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        self.assertIn(b"content-type: application/json", head)
        channel.connectionLost(None)
        return status, json.loads(body)

    def test_body_too_large(self) -> None:
        status, body = self.refuse(b"POST /api/v1/projects HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        self.assertEqual((status, body["code"]), (413, "too_large"))

    def test_malformed(self) -> None:
        status, body = self.refuse(b"POST /api/v1/%ff HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((status, body["code"]), (400, "invalid"))


class OtherUsersTests(ApiWorld):
    """
    carol is in none of alice's projects: every route that names one of
    alice's things answers her 404, the same as for an id that is none, and
    stores nothing.
    """

    def setUp(self) -> None:
        super().setUp()
        JobRoutes(self.edge.identity, self.edge.db, LogTails(self.clock, limit=4096, gap_wait=30.0)).routes(self.app)
        self.resource = self.app.resource()

    def test_every_route_naming_someone_elses_thing_is_404(self) -> None:
        file_id = self.cloud.run(lambda c: self.cloud.registry.put_file(c, self.home, "a.csv", 3, sha256="a" * 64))
        job_id = self.cloud.run(lambda c: self.cloud.registry.submit_job(c, self.home, self.alice["id"], "render",
                                                                         {}, []))
        self.sync()
        code, body = self.request("POST", "/api/v1/projects", {"name": "Zeus"}, user="alice")
        pending_project = body["project"]["id"]
        self.edge.db.run_now(lambda c: c.execute(
            "UPDATE pending_commands SET state = 'rejected', reason = 'x', code = 'conflict'"))
        (notice,) = self.request("GET", "/api/v1/notices", user="alice")[1]["notices"]
        home, alice, key = self.home, self.alice["id"], self.key.key_id
        routes = [
            ("GET", f"/api/v1/projects/{home}", None),
            ("PATCH", f"/api/v1/projects/{home}", {"name": "Mine"}),
            ("DELETE", f"/api/v1/projects/{home}", None),
            ("GET", f"/api/v1/projects/{pending_project}", None),
            ("POST", f"/api/v1/projects/{home}/members", {"name": "carol"}),
            ("PATCH", f"/api/v1/projects/{home}/members/{alice}", {"role": "member"}),
            ("DELETE", f"/api/v1/projects/{home}/members/{alice}", None),
            ("GET", f"/api/v1/jobs?project={home}", None),
            ("POST", "/api/v1/jobs", {"project_id": home, "kind": "render"}),
            ("POST", f"/api/v1/jobs/{job_id}/cancel", None),
            ("GET", f"/api/v1/jobs/{job_id}", None),
            ("GET", f"/api/v1/jobs/{job_id}/log", None),
            ("GET", f"/api/v1/files?project={home}", None),
            ("DELETE", f"/api/v1/files/{file_id}", None),
            ("DELETE", f"/api/v1/notices/{notice['command_id']}", None),
            ("DELETE", f"/api/v1/keys/{key}", None),
        ]
        for method, path, body in routes:
            code, answer = self.request(method, path, body, user="carol")
            self.assertEqual((method, path, code, answer.get("code")), (method, path, 404, "not_found"))
        self.assertEqual(self.stored(), (1, 1), "only alice's own command")
        # And what carol lists has none of alice's.
        for path, key_name in (("/api/v1/projects", "projects"), ("/api/v1/files", "files"),
                               ("/api/v1/keys", "keys"), ("/api/v1/notices", "notices")):
            listed = self.request("GET", path, user="carol")[1][key_name]
            self.assertNotIn(home, json.dumps(listed))
            self.assertNotIn(self.key.key_id, json.dumps(listed))


class CountTests(ApiWorld):
    def test_projects_list_their_file_and_job_counts(self) -> None:
        for name in ("a.csv", "b.csv"):
            self.cloud.run(lambda c, n=name: self.cloud.registry.put_file(c, self.home, n, 3))
        self.cloud.run(lambda c: self.cloud.registry.submit_job(c, self.home, self.alice["id"], "render", {}, []))
        self.sync()
        for user in ("alice", "bob"):
            projects = self.request("GET", "/api/v1/projects", user=user)[1]["projects"]
            counts = {p["id"]: (p["file_count"], p["job_count"]) for p in projects}
            self.assertEqual(counts[self.home], (2, 1))
        bobs = self.cloud.default_project(self.bob["id"])
        self.assertEqual(counts[bobs], (0, 0))
