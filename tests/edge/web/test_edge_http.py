"""
The API wired into the edge's real service tree, over HTTP on loopback,
with the real (threaded) SQLite database and no broker: logging in, a
read, a command answered 202 while the link is down, CSRF refused.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from relay.config import load
from relay.credentials import ScryptCost, hash_password
from relay.edge.config import EdgeConfig
from relay.edge.replica import apply_event
from relay.edge.tap import edge_service
from relay.testing.transfer_world import Vhost
from tests.conftest import free_port


def _seed(conn: Any, user_id: str, project_id: str, password_hash: str) -> None:
    apply_event(conn, "user.put", {"id": user_id, "name": "alice", "password_hash": password_hash,
                                   "is_admin": 0, "disabled": 0, "must_change_password": 0, "created_at": 1.0, "updated_at": 1.0})
    apply_event(conn, "project.put", {"id": project_id, "name": "Home", "description": "", "owner_id": user_id,
                                      "is_default": 1, "created_at": 1.0, "updated_at": 1.0})
    apply_event(conn, "member.put", {"project_id": project_id, "user_id": user_id, "role": "owner"})


class EdgeHttpTests(TestCase):
    async def test_login_read_command_and_stream(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        self.addCleanup(shutil.rmtree, directory.parent.parent, True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(directory)
        port = free_port()
        config = directory / "edge.toml"
        # A vhost of its own: the default one may hold a local deployment's
        # messages for edge "local" (a snapshot would replace the seeded rows).
        vhost = Vhost().create()
        self.addCleanup(vhost.delete)
        config.write_text(f'[edge]\nlisten = "tcp:{port}:interface=127.0.0.1"\ndata_dir = "{directory / "edge"}"\n'
                          f'[link]\nurl = "{vhost.url()}"\n')
        service = edge_service(load(EdgeConfig, config), reactor)
        (db,) = [s for s in service if type(s).__name__ == "Database"]
        user_id, project_id = uuid.uuid4().hex, uuid.uuid4().hex
        password_hash = hash_password("alice's password", ScryptCost(4, 1, 1))
        db.run_now(_seed, user_id, project_id, password_hash)
        service.startService()
        stopped = False

        async def stop() -> None:
            if not stopped:
                await service.stopService()

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        base = f"http://127.0.0.1:{port}"

        response = await treq.post(f"{base}/api/login", json={"name": "alice", "password": "alice's password"}, persistent=False)
        self.assertEqual(response.code, 200)
        login = await response.json()
        cookie = response.cookies()
        headers = {"X-CSRF-Token": login["csrf_token"]}

        response = await treq.get(f"{base}/api/projects", cookies=cookie, persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual([p["id"] for p in (await response.json())["projects"]], [project_id])

        response = await treq.post(f"{base}/api/projects", json={"name": "Zeus"}, cookies=cookie, headers=headers, persistent=False)
        self.assertEqual(response.code, 202)
        project = (await response.json())["project"]
        self.assertEqual((project["name"], project["pending"]), ("Zeus", "create"))
        response = await treq.post(f"{base}/api/projects", json={"name": "Hera"}, cookies=cookie, persistent=False)
        self.assertEqual(response.code, 403, "no CSRF token")

        stopped = True
        await service.stopService().addTimeout(10, reactor)
