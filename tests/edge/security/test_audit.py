"""
The audit log: logins and their failures at a running edge, commands the
cloud applied or refused (membership and role changes among them), each
with who, from where and when, as JSON lines in an owner-only file.
"""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path
from typing import Any

import treq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relay.audit import AuditLog
from relay.link.envelope import Envelope
from relay.sync_messages import MEMBER_ADD
from relay.testing.registry import CloudSide
from tests.edge.security.world import PASSWORD, SecureEdge


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class EdgeAuditTests(TestCase):
    timeout = 60

    async def test_logins_and_failures_are_recorded(self) -> None:
        edge = SecureEdge(self)
        for password in ("wrong", PASSWORD):
            response = await treq.post(f"{edge.base}/api/login", json={"name": "alice", "password": password},
                                       persistent=False)
            await response.content()
        path = edge.data_dir / "audit.log"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        failed, succeeded = records(path)
        self.assertEqual((failed["event"], failed["actor"], failed["address"], failed["status"]),
                         ("login.failed", "alice", "127.0.0.1", 401))
        self.assertEqual((succeeded["event"], succeeded["actor"], succeeded["address"]),
                         ("login", edge.user_id, "127.0.0.1"))
        self.assertTrue(succeeded["at"].endswith("+00:00"))


class CloudAuditTests(SynchronousTestCase):
    def test_commands_applied_and_refused(self) -> None:
        clock = Clock()
        clock.advance(1_764_000_000)
        tmp = Path(self.mktemp())
        tmp.mkdir()
        audit = AuditLog(tmp / "audit.log", clock)
        cloud = CloudSide(tmp / "cloud.db", clock, audit=audit)
        self.addCleanup(cloud.db.close)
        alice = cloud.add_user("alice", "a long password")["id"]
        bob = cloud.add_user("bob", "a long password")["id"]
        project = cloud.default_project(alice)

        def send(type: str, actor: str, **fields: Any) -> None:
            body = {"command_id": uuid.uuid4().hex, "actor": {"user_id": actor, "via": "session"}, **fields}
            cloud.inbox.deliver(Envelope(type=type, source="edge:shanghai-1", time=clock.seconds(), body=body))

        send(MEMBER_ADD, alice, project_id=project, user_id=bob, role="viewer")
        send(MEMBER_ADD, bob, project_id=project, user_id=bob, role="member")
        applied, refused = records(tmp / "audit.log")
        self.assertEqual(
            {k: applied[k] for k in ("event", "actor", "edge", "type", "project_id", "user_id", "role")},
            {"event": "command.applied", "actor": alice, "edge": "shanghai-1", "type": MEMBER_ADD,
             "project_id": project, "user_id": bob, "role": "viewer"},
        )
        self.assertEqual((refused["event"], refused["actor"], refused["code"]), ("command.refused", bob, "forbidden"))
        self.assertNotIn("password_hash", json.dumps([applied, refused]))
