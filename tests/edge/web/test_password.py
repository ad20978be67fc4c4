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
                         (403, {"error": "the current password is wrong", "code": "forbidden"}))
        self.assertEqual(self.change("alice's password", "short", user="alice")[0], 400)
        self.assertEqual(self.change("alice's password", user="alice", csrf=False)[0], 403)
        self.assertEqual(self.change("alice's password")[0], 401)
        self.assertEqual(self.request("POST", "/api/password", {"current_password": "x"}, user="alice")[0], 400)
        self.assertEqual(self.stored(), (0, 0))

    def test_guessing_is_throttled(self) -> None:
        for _ in range(3):
            self.assertEqual(self.change("guess", user="alice")[0], 403)
        # Each further attempt waits, doubling: 1 s after the third failure.
        self.assertEqual(self.change("alice's password", user="alice")[0], 429)
        self.clock.advance(1)
        self.assertEqual(self.change("guess", user="alice")[0], 403)
        self.clock.advance(1)
        self.assertEqual(self.change("alice's password", user="alice")[0], 429)
        self.clock.advance(1)
        self.assertEqual(self.change("alice's password", user="alice")[0], 202)

    def test_an_api_key_may_change_it_too(self) -> None:
        d = self.treq.post(BASE + "/api/password", json={"current_password": "alice's password", "new_password": NEW},
                           headers={"Authorization": [f"Bearer {self.key.token}"]})
        self.treq.flush()
        self.assertEqual(self.successResultOf(d).code, 202)


class OneTimePasswordTests(ApiWorld):
    """
    A password someone else chose (generated for a new account, the first
    admin's) must be changed before the edge does anything else for that
    session; API keys are not held back.
    """

    def setUp(self) -> None:
        super().setUp()
        self.cloud.run(
            lambda c: self.cloud.registry.set_password(
                c, self.alice["id"], hash_password("a generated one", TEST_COST), temporary=True
            )
        )
        self.sync()

    def test_only_the_password_change_is_open_until_it_is_done(self) -> None:
        self.sessions["alice"] = self.login("alice", "a generated one")
        code, me = self.request("GET", "/api/me", user="alice")
        self.assertEqual((code, me["user"]["must_change_password"]), (200, True))
        for method, path, body in [
            ("GET", "/api/projects", None),
            ("GET", "/api/notices", None),
            ("POST", "/api/projects", {"name": "Sneaky"}),
        ]:
            code, answer = self.request(method, path, body, user="alice")
            self.assertEqual((code, answer["code"]), (403, "password_change_required"), (method, path))
        self.assertEqual(self.stored(), (0, 0), "nothing was issued")
        # The API key (made by an admin for a tool) is not held back.
        self.assertEqual(self.request("GET", "/api/projects", bearer=self.key.token)[0], 200)
        # Changing it is allowed; once the cloud's change is back, the flag
        # is gone and the new password logs in to a normal session.
        code, _ = self.change_password("a generated one", NEW)
        self.assertEqual(code, 202)
        self.round_trip()
        self.assertFalse(self.cloud.user("alice")["must_change_password"])
        self.sessions["alice"] = self.login("alice", NEW)
        code, me = self.request("GET", "/api/me", user="alice")
        self.assertEqual((code, me["user"]["must_change_password"]), (200, False))
        self.assertEqual(self.request("GET", "/api/projects", user="alice")[0], 200)

    def change_password(self, current: str, new: str) -> tuple[int, dict[str, object]]:
        return self.request("POST", "/api/password", {"current_password": current, "new_password": new},
                            user="alice")
