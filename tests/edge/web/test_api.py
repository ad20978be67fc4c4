"""
The edge's JSON API: reads from the replica (also with the link down),
commands answered 202 and shown as pending until the cloud answers, the
edge's own refusals answered at once with nothing stored, and who may see
and do what.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import fail

from tests.edge.web.world import ApiWorld


class ReadTests(ApiWorld):
    def test_no_credentials_is_401(self) -> None:
        for method, path in [("GET", "/api/projects"), ("GET", f"/api/projects/{self.home}"),
                             ("GET", "/api/jobs"), ("GET", "/api/files"), ("GET", "/api/notices"),
                             ("POST", "/api/projects"), ("DELETE", f"/api/files/{'0' * 32}")]:
            code, body = self.request(method, path)
            self.assertEqual((method, path, code), (method, path, 401))
            self.assertEqual(body, {"error": "not logged in", "code": "unauthenticated"})
        code, body = self.request("GET", "/api/projects", bearer="relay_0123456789abcdef_" + "x" * 43)
        self.assertEqual((code, body), (401, {"error": "unknown API key", "code": "unauthenticated"}))

    def test_projects_with_roles_and_members(self) -> None:
        code, body = self.request("GET", "/api/projects", user="alice")
        self.assertEqual(code, 200)
        (home,) = body["projects"]
        self.assertEqual((home["id"], home["name"], home["role"], home["pending"]), (self.home, "Home", "owner", None))
        self.assertEqual(
            [(m["name"], m["role"], m["pending"]) for m in home["members"]],
            [("alice", "owner", None), ("bob", "viewer", None)],
        )
        code, body = self.request("GET", "/api/projects", user="bob")
        self.assertEqual(
            {(p["name"], p["owner_id"], p["role"]) for p in body["projects"]},
            {("Home", self.alice["id"], "viewer"), ("Home", self.bob["id"], "owner")},
        )
        code, body = self.request("GET", "/api/projects", user="carol")
        self.assertEqual([p["owner_id"] for p in body["projects"]], [self.carol["id"]])

    def test_project_detail_has_members_files_and_jobs(self) -> None:
        self.cloud.run(lambda c: self.cloud.registry.put_file(c, self.home, "data.csv", 12))
        self.cloud.run(lambda c: self.cloud.registry.submit_job(c, self.home, self.alice["id"], "render", {}, []))
        self.sync()
        for user in ("alice", "bob"):
            code, body = self.request("GET", f"/api/projects/{self.home}", user=user)
            self.assertEqual(code, 200)
            project = body["project"]
            self.assertEqual([f["name"] for f in project["files"]], ["data.csv"])
            self.assertEqual([(j["kind"], j["state"]) for j in project["jobs"]], [("render", "queued")])
            self.assertEqual(len(project["members"]), 2)

    def test_someone_elses_project_is_not_found(self) -> None:
        for path in (f"/api/projects/{self.home}", f"/api/jobs?project={self.home}",
                     f"/api/files?project={self.home}", "/api/projects/not-an-id", "/api/jobs?project=x"):
            code, body = self.request("GET", path, user="carol")
            self.assertEqual((path, code, body), (path, 404, {"error": "no such project", "code": "not_found"}))

    def test_jobs_and_files_of_all_projects_or_one(self) -> None:
        self.cloud.run(lambda c: self.cloud.registry.put_file(c, self.home, "a.txt", 1))
        bobs = self.cloud.default_project(self.bob["id"])
        self.cloud.run(lambda c: self.cloud.registry.put_file(c, bobs, "b.txt", 1))
        self.sync()
        code, body = self.request("GET", "/api/files", user="bob")
        self.assertEqual(sorted(f["name"] for f in body["files"]), ["a.txt", "b.txt"])
        code, body = self.request("GET", f"/api/files?project={bobs}", user="bob")
        self.assertEqual([(f["name"], f["project_id"]) for f in body["files"]], [("b.txt", bobs)])
        code, body = self.request("GET", "/api/files", user="alice")
        self.assertEqual([f["name"] for f in body["files"]], ["a.txt"])

    def test_unexpected_failure_is_a_json_500(self) -> None:
        self.session("alice")
        self.patch(self.edge.db, "read", lambda *a: fail(RuntimeError("disk on fire")))
        code, body = self.request("GET", "/api/projects", user="alice")
        self.assertEqual((code, body), (500, {"error": "internal error; it was logged", "code": "internal"}))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class CommandTests(ApiWorld):
    def test_create_is_pending_until_the_cloud_answers(self) -> None:
        code, body = self.request("POST", "/api/projects", {"name": " Zeus ", "description": "gods"}, user="alice")
        self.assertEqual(code, 202, body)
        self.assertEqual(body["state"], "pending")
        self.assertEqual((body["project"]["name"], body["project"]["pending"]), ("Zeus", "create"))
        project_id = body["project"]["id"]
        self.assertEqual(self.kinds("alice"), ["command.pending"])
        # Shown at once, with the link down.
        code, listed = self.request("GET", "/api/projects", user="alice")
        zeus = next(p for p in listed["projects"] if p["id"] == project_id)
        self.assertEqual((zeus["pending"], zeus["role"]), ("create", "owner"))
        self.assertEqual([(m["name"], m["pending"]) for m in zeus["members"]], [("alice", "create")])
        code, detail = self.request("GET", f"/api/projects/{project_id}", user="alice")
        self.assertEqual(code, 200)
        self.round_trip()
        code, listed = self.request("GET", "/api/projects", user="alice")
        zeus = next(p for p in listed["projects"] if p["id"] == project_id)
        self.assertIsNone(zeus["pending"])
        applied = [e for e in self.seen["alice"] if e.kind == "command.applied"]
        self.assertEqual([(e.data["command_id"], e.data["type"], e.data["project_id"]) for e in applied],
                         [(body["command_id"], "project.create", project_id)])
        self.assertIn("replica.changed", self.kinds("alice"))
        self.assertEqual(self.seen["carol"], [], "carol is told nothing about alice's project")

    def test_csrf_is_needed_for_sessions_not_for_api_keys(self) -> None:
        code, body = self.request("POST", "/api/projects", {"name": "Zeus"}, user="alice", csrf=False)
        self.assertEqual((code, body), (403, {"error": "missing or wrong CSRF token", "code": "forbidden"}))
        code, body = self.request("DELETE", f"/api/projects/{self.home}", user="alice", csrf=False)
        self.assertEqual(code, 403)
        self.assertEqual(self.stored(), (0, 0))
        code, body = self.request("POST", "/api/projects", {"name": "Zeus"}, bearer=self.key.token)
        self.assertEqual(code, 202, body)
        (message,) = self.sent()
        self.assertEqual(message.body["actor"], {"user_id": self.alice["id"], "via": "key", "key_id": self.key.key_id})

    def test_bad_input_is_400_and_stores_nothing(self) -> None:
        cases: list[tuple[str, str, Any, int]] = [
            ("POST", "/api/projects", b"{not json", 400),
            ("POST", "/api/projects", [1, 2], 400),
            ("POST", "/api/projects", {}, 400),
            ("POST", "/api/projects", {"name": "   "}, 400),
            ("POST", "/api/projects", {"name": "x" * 201}, 400),
            ("POST", "/api/projects", {"name": "a\x00b"}, 400),
            ("POST", "/api/projects", {"name": "Zeus", "description": 3}, 400),
            ("PATCH", f"/api/projects/{self.home}", {"name": 7}, 400),
            ("POST", f"/api/projects/{self.home}/members", {"name": "bob", "role": "owner"}, 400),
            ("POST", f"/api/projects/{self.home}/members", {"role": "member"}, 400),
            ("POST", f"/api/projects/{self.home}/members", {"name": "nobody", "role": "member"}, 404),
            ("POST", "/api/jobs", {"project_id": self.home, "kind": "Bad Kind"}, 400),
            ("POST", "/api/jobs", {"project_id": self.home, "kind": "render", "parameters": []}, 400),
            ("POST", "/api/jobs", {"project_id": self.home, "kind": "render", "inputs": ["nope"]}, 400),
            ("POST", "/api/jobs", {"kind": "render"}, 400),
            ("PATCH", "/api/projects/nope", {"name": "Zeus"}, 404),
            ("DELETE", "/api/files/nope", None, 404),
            ("POST", "/api/jobs/nope/cancel", None, 404),
        ]
        for method, path, body, status in cases:
            code, answer = self.request(method, path, body, user="alice")
            self.assertEqual((method, path, body, code), (method, path, body, status))
            self.assertIsInstance(answer["error"], str)
        code, _ = self.request("POST", "/api/projects", b"name=Zeus", user="alice",
                               content_type="application/x-www-form-urlencoded")
        self.assertEqual(code, 415)
        self.assertEqual(self.stored(), (0, 0))
        self.assertEqual(self.seen["alice"], [])

    def test_refusals_the_replica_foresees(self) -> None:
        cases = [
            ("bob", "PATCH", f"/api/projects/{self.home}", {"name": "Mine"}, 403,
             "a viewer may not rename this project"),
            ("bob", "POST", "/api/jobs", {"project_id": self.home, "kind": "render"}, 403,
             "a viewer may not submit jobs in this project"),
            ("carol", "PATCH", f"/api/projects/{self.home}", {"name": "Mine"}, 404, "no such project"),
            ("carol", "DELETE", f"/api/projects/{self.home}", None, 404, "no such project"),
            ("carol", "POST", f"/api/projects/{self.home}/members", {"name": "carol", "role": "member"}, 404,
             "no such project"),
            ("carol", "POST", "/api/jobs", {"project_id": self.home, "kind": "render"}, 404, "no such project"),
            ("alice", "DELETE", f"/api/projects/{self.home}", None, 409,
             "a user's default project cannot be deleted"),
            ("alice", "POST", f"/api/jobs/{'0' * 32}/cancel", None, 404, "no such job"),
            ("alice", "DELETE", f"/api/files/{'0' * 32}", None, 404, "no such file"),
        ]
        for user, method, path, body, status, reason in cases:
            code, answer = self.request(method, path, body, user=user)
            self.assertEqual((user, method, path, code, answer["error"]), (user, method, path, status, reason))
        self.assertEqual(self.stored(), (0, 0))

    def test_members_jobs_and_files(self) -> None:
        file_id = self.cloud.run(lambda c: self.cloud.registry.put_file(c, self.home, "in.csv", 3,
                                                                        object_key="projects/x/files/in"))
        self.sync()
        code, body = self.request("POST", f"/api/projects/{self.home}/members", {"name": "carol", "role": "member"},
                                  user="alice")
        self.assertEqual(code, 202, body)
        self.assertEqual((body["member"]["name"], body["member"]["role"], body["member"]["pending"]),
                         ("carol", "member", "add"))
        code, body = self.request("DELETE", f"/api/projects/{self.home}/members/{self.bob['id']}", user="alice")
        self.assertEqual((code, body["member"]["pending"]), (202, "remove"))
        code, body = self.request("POST", "/api/jobs", {"project_id": self.home, "kind": "render",
                                                        "parameters": {"frames": 3}, "inputs": [file_id]},
                                  user="alice")
        self.assertEqual((code, body["job"]["pending"], body["job"]["state"]), (202, "submit", "queued"))
        job_id = body["job"]["id"]
        code, listed = self.request("GET", f"/api/jobs?project={self.home}", user="alice")
        self.assertEqual([j["id"] for j in listed["jobs"]], [job_id])
        code, body = self.request("DELETE", f"/api/files/{file_id}", user="alice")
        self.assertEqual((code, body["file"]["pending"]), (202, "delete"))
        self.round_trip()
        self.assertEqual(self.stored(), (0, 0))
        code, detail = self.request("GET", f"/api/projects/{self.home}", user="alice")
        project = detail["project"]
        self.assertEqual([(m["name"], m["pending"]) for m in project["members"]],
                         [("alice", None), ("carol", None)])
        self.assertEqual([(j["id"], j["pending"]) for j in project["jobs"]], [(job_id, None)])
        self.assertEqual(project["files"], [])
        # carol, now a member, sees the project and hears about it.
        code, detail = self.request("GET", f"/api/projects/{self.home}", user="carol")
        self.assertEqual(code, 200)
        self.assertIn("replica.changed", self.kinds("carol"))
        code, body = self.request("POST", f"/api/jobs/{job_id}/cancel", user="alice")
        self.assertEqual((code, body["job"]["pending"]), (202, "cancel"))
        self.round_trip()
        code, listed = self.request("GET", f"/api/jobs?project={self.home}", user="alice")
        self.assertEqual([(j["state"], j["pending"]) for j in listed["jobs"]], [("cancelled", None)])

    def test_a_refusal_by_the_cloud_becomes_a_notice(self) -> None:
        # bob is a member at the edge, already a viewer at the cloud.
        self.cloud.run(self.cloud.registry.set_member, self.home, self.bob["id"], "member")
        self.sync()
        self.cloud.run(self.cloud.registry.set_member, self.home, self.bob["id"], "viewer")
        code, body = self.request("POST", "/api/jobs", {"project_id": self.home, "kind": "render"}, user="bob")
        self.assertEqual(code, 202, body)
        command_id = body["command_id"]
        self.round_trip()
        (rejected,) = [e for e in self.seen["bob"] if e.kind == "command.rejected"]
        self.assertEqual(rejected.data["reason"], "a viewer may not submit jobs in this project")
        self.assertEqual((rejected.data["command_id"], rejected.data["code"]), (command_id, "forbidden"))
        code, body = self.request("GET", "/api/notices", user="bob")
        (notice,) = body["notices"]
        self.assertEqual((notice["command_id"], notice["type"], notice["reason"]),
                         (command_id, "job.submit", "a viewer may not submit jobs in this project"))
        code, listed = self.request("GET", f"/api/jobs?project={self.home}", user="bob")
        self.assertEqual(listed["jobs"], [])
        self.assertEqual(self.request("DELETE", f"/api/notices/{command_id}", user="alice")[0], 404)
        self.assertEqual(self.request("DELETE", f"/api/notices/{command_id}", user="bob", csrf=False)[0], 403)
        self.assertEqual(self.request("DELETE", f"/api/notices/{command_id}", user="bob"),
                         (200, {"dismissed": command_id}))
        self.assertEqual(self.request("GET", "/api/notices", user="bob"), (200, {"notices": []}))
        self.assertEqual(self.request("DELETE", f"/api/notices/{command_id}", user="bob")[0], 404)
