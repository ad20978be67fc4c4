"""
A member's role changed through C{PATCH /api/v1/projects/<id>/members/<user>}:
a C{project.member.role} command, checked at the edge against the replica,
shown as pending C{role} until the cloud (which decides again) answers.
"""

from __future__ import annotations

from tests.edge.web.world import ApiWorld


class RoleChangeTests(ApiWorld):
    def path(self, user_id: str, project: str | None = None) -> str:
        return f"/api/v1/projects/{project or self.home}/members/{user_id}"

    def members(self, user: str = "alice") -> list[tuple[str, str, str | None]]:
        code, body = self.request("GET", f"/api/v1/projects/{self.home}", user=user)
        self.assertEqual(code, 200)
        return [(m["name"], m["role"], m["pending"]) for m in body["project"]["members"]]

    def test_pending_until_the_cloud_applies_it(self) -> None:
        code, body = self.request("PATCH", self.path(self.bob["id"]), {"role": "member"}, user="alice")
        self.assertEqual(code, 202, body)
        self.assertEqual((body["state"], set(body)), ("pending", {"command_id", "state", "member"}))
        self.assertEqual(body["member"], {"user_id": self.bob["id"], "name": "bob", "role": "member",
                                          "pending": "role"})
        (message,) = self.sent()
        self.assertEqual((message.type, message.body["role"]), ("project.member.role", "member"))
        self.edge.db.run_now(lambda c: c.execute("DELETE FROM fake_outbox"))
        self.cloud.inbox.deliver(message)
        self.assertEqual(self.members(), [("alice", "owner", None), ("bob", "member", "role")])
        # Others see it only once the cloud applied it.
        self.assertEqual(self.members("bob"), [("alice", "owner", None), ("bob", "viewer", None)])
        self.sync()
        self.assertEqual(self.members(), [("alice", "owner", None), ("bob", "member", None)])
        self.assertEqual(self.members("bob"), [("alice", "owner", None), ("bob", "member", None)])
        self.assertEqual(self.stored(), (0, 0))
        self.assertIn("command.applied", self.kinds("alice"))

    def test_handing_the_project_over(self) -> None:
        code, body = self.request("POST", "/api/v1/projects", {"name": "Zeus"}, user="alice")
        zeus = body["project"]["id"]
        self.request("POST", f"/api/v1/projects/{zeus}/members", {"name": "bob", "role": "viewer"}, user="alice")
        self.round_trip()
        code, body = self.request("PATCH", self.path(self.bob["id"], zeus), {"role": "owner"}, user="alice")
        self.assertEqual((code, body["member"]["role"], body["member"]["pending"]), (202, "owner", "role"))
        self.round_trip()
        code, body = self.request("GET", f"/api/v1/projects/{zeus}", user="bob")
        self.assertEqual((body["project"]["role"], body["project"]["owner_id"]), ("owner", self.bob["id"]))
        self.assertEqual([(m["name"], m["role"]) for m in body["project"]["members"]],
                         [("bob", "owner"), ("alice", "member")])

    def test_refusals_store_nothing(self) -> None:
        cases = [
            ("alice", self.path(self.bob["id"]), {"role": "admin"}, 400, "invalid"),
            ("alice", self.path(self.bob["id"]), {}, 400, "invalid"),
            ("alice", self.path(self.bob["id"]), b"[]", 400, "invalid"),
            ("alice", self.path(self.bob["id"]), {"role": "viewer"}, 409, "conflict"),
            ("alice", self.path(self.alice["id"]), {"role": "member"}, 409, "conflict"),
            ("alice", self.path(self.bob["id"]), {"role": "owner"}, 409, "conflict"),  # a default project
            ("alice", self.path(self.carol["id"]), {"role": "member"}, 404, "not_found"),
            ("alice", self.path("nope"), {"role": "member"}, 404, "not_found"),
            ("alice", self.path(self.bob["id"], "nope"), {"role": "member"}, 404, "not_found"),
            ("bob", self.path(self.bob["id"]), {"role": "member"}, 403, "forbidden"),
            ("carol", self.path(self.bob["id"]), {"role": "member"}, 404, "not_found"),
        ]
        for user, path, body, status, code in cases:
            answer = self.request("PATCH", path, body, user=user)
            self.assertEqual((user, path, body, answer[0], answer[1]["code"]), (user, path, body, status, code))
        self.assertEqual(self.stored(), (0, 0))
        self.assertEqual(self.seen["alice"], [])

    def test_the_cloud_decides_again(self) -> None:
        code, body = self.request("PATCH", self.path(self.bob["id"]), {"role": "member"}, user="alice")
        self.assertEqual(code, 202)
        # Meanwhile bob left, at the cloud.
        self.cloud.run(self.cloud.registry.remove_member, self.home, self.bob["id"])
        self.round_trip()
        code, notices = self.request("GET", "/api/v1/notices", user="alice")
        (notice,) = notices["notices"]
        self.assertEqual((notice["command_id"], notice["type"], notice["code"], notice["reason"]),
                         (body["command_id"], "project.member.role", "not_found", "no such member"))
        self.assertEqual(self.members(), [("alice", "owner", None)])
