"""
POST /api/password: checked at the edge against the replica, sent to the
cloud as a hash (never the plaintext), in effect at the edge after sync.
"""

from __future__ import annotations

import hashlib
import json

from twisted.trial.unittest import FailTest

from relay.credentials import hash_password
from relay.testing.registry import TEST_COST
from tests.edge.web.world import BASE, ApiWorld

NEW = "a brand new password"


class PasswordTests(ApiWorld):
    def change(self, current: str, new: str = NEW, **kwargs: object) -> tuple[int, dict[str, object]]:
        return self.request("POST", "/api/password", {"current_password": current, "new_password": new},
                            **kwargs)  # type: ignore[arg-type]

    def test_after_sync_the_new_password_logs_in_and_the_old_does_not(self) -> None:
        code, body = self.change("alice's password", user="alice")
        self.assertEqual((code, body["state"]), (202, "pending"), body)
        (message,) = self.sent()
        self.assertEqual(message.type, "user.password")
        wire = json.dumps(message.body)
        self.assertNotIn(NEW, wire, "plaintext never goes over the link")
        self.assertNotIn("alice's password", wire)
        old_hash = self.cloud.user("alice")["password_hash"]
        self.assertEqual(message.body["replaces"], hashlib.sha256(old_hash.encode()).hexdigest())
        # Until the cloud's answer arrives, the old password still counts here.
        self.login("alice", "alice's password")
        self.cloud.inbox.deliver(message)
        self.sync()
        self.login("alice", NEW)
        with self.assertRaises(FailTest):
            self.login("alice", "alice's password")
        self.assertEqual(self.request("GET", "/api/projects", user="alice")[0], 401, "the old session ended")
        self.assertIn("command.applied", self.kinds("alice"))
        self.assertEqual(self.stored(), (0, 0))

    def test_a_change_made_meanwhile_at_the_cloud_wins(self) -> None:
        self.assertEqual(self.change("alice's password", user="alice")[0], 202)
        self.cloud.run(self.cloud.registry.set_password, self.alice["id"], hash_password("admin's reset pw", TEST_COST))
        self.round_trip()
        # alice's session ended with the reset; her API key still works.
        (notice,) = self.request("GET", "/api/notices", bearer=self.key.token)[1]["notices"]
        self.assertEqual((notice["type"], notice["code"]), ("user.password", "conflict"))
        self.login("alice", "admin's reset pw")

    def test_refusals_store_nothing(self) -> None:
        self.assertEqual(self.change("wrong password", user="alice"),
                         (403, {"error": "the current password is wrong"}))
        self.assertEqual(self.change("alice's password", "short", user="alice")[0], 400)
        self.assertEqual(self.change("alice's password", user="alice", csrf=False)[0], 403)
        self.assertEqual(self.change("alice's password")[0], 401)
        self.assertEqual(self.request("POST", "/api/password", {"current_password": "x"}, user="alice")[0], 400)
        self.assertEqual(self.stored(), (0, 0))

    def test_guessing_is_throttled(self) -> None:
        for _ in range(10):
            self.assertEqual(self.change("guess", user="alice")[0], 403)
        self.assertEqual(self.change("alice's password", user="alice")[0], 429)
        self.clock.advance(301)
        self.assertEqual(self.change("alice's password", user="alice")[0], 202)

    def test_an_api_key_may_change_it_too(self) -> None:
        d = self.treq.post(BASE + "/api/password", json={"current_password": "alice's password", "new_password": NEW},
                           headers={"Authorization": [f"Bearer {self.key.token}"]})
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 202)
