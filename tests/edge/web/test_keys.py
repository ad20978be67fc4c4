"""
Self-service API keys: made at the edge, the secret shown once and never
sent or stored (only its hash travels, in C{user.key.create}), working once
the cloud applied it and the replica has it; revoked the same way.
"""

from __future__ import annotations

import json

from relay.credentials import parse_api_key, verify_api_key
from relay.link.envelope import TO_CLOUD
from tests.edge.web.world import ApiWorld


class KeyTests(ApiWorld):
    def keys(self, user: str = "alice") -> list[tuple[str, str | None]]:
        code, body = self.request("GET", "/api/v1/keys", user=user)
        self.assertEqual(code, 200, body)
        for key in body["keys"]:
            self.assertEqual(set(key), {"id", "name", "created_at", "pending"})
        return [(k["name"], k["pending"]) for k in body["keys"]]

    def test_created_shown_once_works_once_applied(self) -> None:
        self.assertEqual(self.keys(), [("ci", None)], "the key an admin made")
        self.clock.advance(1)
        code, body = self.request("POST", "/api/v1/keys", {"name": " laptop "}, user="alice")
        self.assertEqual(code, 202, body)
        self.assertEqual(set(body), {"command_id", "state", "key", "secret"})
        key, secret = body["key"], body["secret"]
        self.assertEqual((body["state"], key["name"], key["pending"]), ("pending", "laptop", "create"))
        self.assertEqual(parse_api_key(secret)[0], key["id"])
        self.assertEqual(self.keys(), [("ci", None), ("laptop", "create")])
        # What travels: the hash, never the secret.
        (message,) = self.sent()
        self.assertEqual(message.type, "user.key.create")
        self.assertEqual(set(message.body), {"command_id", "actor", "key_id", "key_hash", "name"})
        self.assertTrue(verify_api_key(parse_api_key(secret)[1], message.body["key_hash"]))
        stored = self.edge.db.run_now(lambda c: json.dumps([list(r) for r in c.execute(
            "SELECT * FROM pending_commands").fetchall()]))
        self.assertNotIn(parse_api_key(secret)[1], stored)
        self.assertNotIn(parse_api_key(secret)[1], json.dumps(message.body))
        # Not yet at the cloud: the key does not work.
        self.assertEqual(self.request("GET", "/api/v1/projects", bearer=secret)[0], 401)
        self.cloud.inbox.deliver(message)
        self.edge.db.run_now(lambda c: c.execute("DELETE FROM fake_outbox"))
        self.assertEqual(self.request("GET", "/api/v1/projects", bearer=secret)[0], 401, "not in the replica yet")
        self.sync()
        self.assertEqual(self.keys(), [("ci", None), ("laptop", None)])
        code, me = self.request("GET", "/api/v1/me", bearer=secret)
        self.assertEqual((code, me["user"]["name"], me["via"]), (200, "alice", "key"))
        # Never shown again.
        code, body = self.request("GET", "/api/v1/keys", user="alice")
        self.assertNotIn(secret, json.dumps(body))
        self.assertNotIn(parse_api_key(secret)[1], json.dumps(body))
        self.assertEqual(self.stored(), (0, 0))

    def test_revoked_stops_working_once_applied(self) -> None:
        token = self.key.token
        self.assertEqual(self.request("GET", "/api/v1/projects", bearer=token)[0], 200)
        code, body = self.request("DELETE", f"/api/v1/keys/{self.key.key_id}", user="alice")
        self.assertEqual((code, body["state"], body["key"]["pending"]), (202, "pending", "revoke"))
        self.assertEqual(self.keys(), [("ci", "revoke")])
        self.assertEqual(self.request("GET", "/api/v1/projects", bearer=token)[0], 200, "until the cloud applied it")
        code, again = self.request("DELETE", f"/api/v1/keys/{self.key.key_id}", user="alice")
        self.assertEqual((code, again["code"]), (409, "conflict"))
        self.round_trip()
        code, body = self.request("GET", "/api/v1/projects", bearer=token)
        self.assertEqual((code, body["code"]), (401, "unauthenticated"))
        self.assertEqual(self.keys(), [])
        self.assertEqual(self.stored(), (0, 0))

    def test_a_key_can_revoke_itself(self) -> None:
        code, body = self.request("DELETE", f"/api/v1/keys/{self.key.key_id}", bearer=self.key.token)
        self.assertEqual(code, 202, body)
        self.round_trip()
        self.assertEqual(self.request("GET", "/api/v1/keys", bearer=self.key.token)[0], 401)

    def test_other_users_keys_are_not_found(self) -> None:
        for user in ("bob", "carol"):
            self.assertEqual(self.keys(user), [])
            code, body = self.request("DELETE", f"/api/v1/keys/{self.key.key_id}", user=user)
            self.assertEqual((code, body), (404, {"error": "no such API key", "code": "not_found"}))
        for path in ("/api/v1/keys/nope", f"/api/v1/keys/{'0' * 16}"):
            code, body = self.request("DELETE", path, user="alice")
            self.assertEqual((code, body["code"]), (404, "not_found"))
        self.assertEqual(self.stored(), (0, 0))
        self.assertEqual(self.request("GET", "/api/v1/projects", bearer=self.key.token)[0], 200)

    def test_the_cloud_refuses_a_foreign_revocation(self) -> None:
        # What an edge that did not check (or a stale one) might send: the
        # cloud decides again, and bob cannot revoke alice's key.
        body = {"command_id": "1" * 32, "actor": {"user_id": self.bob["id"], "via": "session"},
                "key_id": self.key.key_id}
        self.edge.db.run_now(lambda c: self.edge.outbox.put(c, "user.key.revoke", body, to=TO_CLOUD))
        self.round_trip()
        outcome = self.cloud.run(lambda c: tuple(c.execute(
            "SELECT status, code FROM commands WHERE command_id = ?", ("1" * 32,)).fetchone()))
        self.assertEqual(outcome, ("rejected", "not_found"))
        self.assertEqual(self.request("GET", "/api/v1/projects", bearer=self.key.token)[0], 200)

    def test_bad_input(self) -> None:
        for body in ({}, {"name": ""}, {"name": "  "}, {"name": 3}, {"name": "x" * 201}, {"name": "a\nb"}):
            code, answer = self.request("POST", "/api/v1/keys", body, user="alice")
            self.assertEqual((body, code, answer["code"]), (body, 400, "invalid"))
        code, answer = self.request("POST", "/api/v1/keys", {"name": "x"}, user="alice", csrf=False)
        self.assertEqual((code, answer["code"]), (403, "forbidden"))
        self.assertEqual(self.request("GET", "/api/v1/keys")[0], 401)
        self.assertEqual(self.stored(), (0, 0))

