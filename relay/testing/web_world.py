"""
A real edge and cloud for the API's end-to-end checks (the schemathesis
test) and C{bench/web.py}: moto's S3 server, a RabbitMQ vhost of its own,
C{twistd relay-cloud} and C{twistd relay-edge} as subprocesses, a user with
an API key (and, if asked, projects full of files) seeded in the cloud's
registry before it starts, and the edge waited for until it knows the key.

Blocking, like L{relay.testing.transfer_world}, which it builds on.  The
edge reaches the broker at C{amqp_port} (a link emulator's, to cut the
link), RabbitMQ's own by default.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from relay.testing.db import SynchronousDatabase
from relay.testing.s3servers import S3Server, free_port, start_moto
from relay.testing.transfer_world import (
    AMQP_PORT,
    Node,
    Vhost,
    cloud_node,
    edge_node,
    seed_api_key,
    seed_cloud,
)

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
#: The seeded user's password (a cheap scrypt: tests log in often).
PASSWORD = "the web world's password"


def _set_password(cloud_dir: Path, user_id: str, password: str) -> None:
    from relay.credentials import ScryptCost, hash_password

    conn = sqlite3.connect(cloud_dir / "cloud.db")
    try:
        with conn:
            conn.execute("UPDATE users SET password_hash = ? WHERE id = ?",
                         (hash_password(password, ScryptCost(4, 1, 1)), user_id))
    finally:
        conn.close()


def seed_projects(
    cloud_dir: Path, owner_id: str, projects: int, files: int, s3: S3Server | None = None
) -> list[str]:
    """
    C{projects} projects of C{owner_id}'s, each with C{files} stored files,
    in the cloud's registry (before the cloud starts); returns their ids.
    With C{s3}, each file's object is put there too (so it downloads).
    """
    from relay.cloud.registry import Registry
    from relay.cloud.sync import EventLog
    from relay.cloud.tap import SCHEMAS

    db = SynchronousDatabase(cloud_dir / "cloud.db", SCHEMAS)
    clock = Clock()
    clock.advance(time.time())
    registry = Registry(EventLog(clock), clock)

    def work(conn: Any) -> list[str]:
        made = []
        for p in range(projects):
            project_id = registry.create_project(conn, owner_id, f"project {p:03d}", "seeded")
            for f in range(files):
                data = f"file {f} of project {p}\n".encode() * (1 + f)
                key = f"projects/{project_id}/files/{f}"
                if s3 is not None:
                    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)
                registry.put_file(conn, project_id, f"file-{f:04d}.dat", len(data),
                                  sha256=hashlib.sha256(data).hexdigest(), object_key=key)
            made.append(project_id)
        return made

    try:
        result: Any = db.run(work).result
        return list(result)
    finally:
        db.close()


class WebWorld:
    """
    One cloud, one edge, one user (C{user_id}, C{api_key}); C{base} is the
    edge's URL.
    """

    def __init__(
        self, root: Path, *, amqp_port: int | None = None, projects: int = 0, files: int = 0,
        objects: bool = True,
    ) -> None:
        self.root = root
        self.vhost = Vhost()
        self.edge_port = free_port()
        self.base = f"http://127.0.0.1:{self.edge_port}"
        self._amqp_port = amqp_port or AMQP_PORT
        self._projects, self._files, self._objects = projects, files, objects
        self.s3: S3Server | None = None
        self.cloud: Node | None = None
        self.edge: Node | None = None
        self.project_ids: list[str] = []

    def start(self, timeout: float = 60.0) -> WebWorld:
        self.root.mkdir(parents=True, exist_ok=True)
        self.s3 = start_moto(log_path=self.root / "moto.log")
        self.vhost.create()
        self.user_id, self.project_id = seed_cloud(self.root / "cloud")
        self.api_key = seed_api_key(self.root / "cloud", self.user_id)
        _set_password(self.root / "cloud", self.user_id, PASSWORD)
        if self._projects:
            self.project_ids = seed_projects(self.root / "cloud", self.user_id, self._projects, self._files,
                                             self.s3 if self._objects else None)
        credentials = self.s3.write_credentials(self.root / "s3-credentials.toml")
        self.cloud = cloud_node(self.root, amqp_url=self.vhost.url(), listen_port=free_port(), s3={
            "bucket": self.s3.bucket, "endpoint_url": self.s3.endpoint, "addressing_style": "path",
            "credentials_file": str(credentials),
        }).start()
        self.edge = edge_node(self.root, edge_id="edge-1", amqp_url=self.vhost.url(self._amqp_port),
                              listen_port=self.edge_port)
        # The browser front end of this checkout (the edge runs in root).
        self.edge.config.write_text(self.edge.config.read_text().replace(
            "[edge]\n", f"[edge]\nweb_dir = \"{WEB_DIR}\"\n", 1))
        self.edge.start()
        self.wait_for_key(timeout)
        return self

    def get(self, path: str, key: str | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {key or self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def login(self) -> dict[str, str]:
        """
        A new session of the user's: the headers that carry it (the
        cookie and the CSRF token).
        """
        request = urllib.request.Request(
            self.base + "/api/v1/login", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"name": "alice", "password": PASSWORD}).encode(),
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
            cookie = response.headers["Set-Cookie"].split(";")[0]
        return {"Cookie": cookie, "X-CSRF-Token": body["csrf_token"]}

    def wait_for_key(self, timeout: float) -> None:
        """Until the edge's replica has the user's key (and the seeded projects)."""
        deadline = time.monotonic() + timeout
        while True:
            for node in (self.cloud, self.edge):
                if node is not None and not node.alive:
                    raise RuntimeError(f"{node.plugin} exited:\n{node.log_text()[-3000:]}")
            try:
                code, body = self.get("/api/v1/projects")
                if code == 200 and len(body["projects"]) >= 1 + self._projects:
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the edge did not sync the key within {timeout}s:\n"
                                   f"{self.edge.log_text()[-3000:] if self.edge else ''}")
            time.sleep(0.2)

    def stop(self) -> None:
        for node in (self.edge, self.cloud):
            if node is not None:
                node.stop()
        if self.s3 is not None:
            self.s3.stop()
        try:
            self.vhost.delete()
        except RuntimeError:
            pass
