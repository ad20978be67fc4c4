"""
A small blocking tus client for tests that drive a separate edge process:
plain requests with http.client, and a PATCH whose connection is cut
mid-body.
"""

from __future__ import annotations

import http.client
import socket
import struct
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay.crypto import load_or_create_master_key
from relay.edge.uploads.spool import Spool

KEY = "k-alice"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def offset(self) -> int:
        return int(self.headers["upload-offset"])


class TusClient:
    def __init__(self, base: str, key: str = KEY) -> None:
        parts = urllib.parse.urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.key = key

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            all_headers = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {self.key}"}
            all_headers.update(headers or {})
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                         response.read())
        finally:
            conn.close()

    def create(self, length: int, **headers: str) -> str:
        reply = self.request("POST", "/files/", {"Upload-Length": str(length), **headers})
        assert reply.status == 201, reply
        return reply.headers["location"]

    def head(self, url: str) -> Reply:
        return self.request("HEAD", url)

    def patch(self, url: str, offset: int, data: bytes, **headers: str) -> Reply:
        headers = {"Upload-Offset": str(offset),
                   "Content-Type": "application/offset+octet-stream", **headers}
        return self.request("PATCH", url, headers, data)

    def cut_patch(self, url: str, offset: int, declared: int, data: bytes,
                  before_reset: Callable[[], None] = lambda: None) -> None:
        """
        Send a PATCH announcing C{declared} bytes, send C{data}, call
        C{before_reset}, then reset the connection.
        """
        head = (
            f"PATCH {url} HTTP/1.1\r\nHost: {self.host}\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {self.key}\r\nUpload-Offset: {offset}\r\n"
            "Content-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        ).encode()
        with socket.create_connection((self.host, self.port), timeout=30) as s:
            s.sendall(head + data)
            before_reset()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def stored(data_dir: Path, upload_id: str) -> bytes:
    key = load_or_create_master_key(data_dir / "spool.key")
    with Spool(data_dir / "spool", key).reader(upload_id) as reader:
        return reader.read(0, reader.length)


def seed_replica(data_dir: Path, user: str = "alice") -> str:
    """
    Put a user with an API key and a default project into a new edge
    database, as the cloud's replication would; return the key.
    """
    from relay.credentials import new_api_key
    from relay.db import connect, migrate
    from relay.edge.tap import SCHEMAS

    data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(data_dir / "edge.db")
    for schema in SCHEMAS:
        migrate(conn, schema)
    key = new_api_key()
    now = time.time()
    conn.execute(
        "INSERT INTO replica_users (id, name, password_hash, is_admin, disabled, created_at, updated_at) "
        "VALUES (?, ?, '!', 0, 0, ?, ?)", (user, user, now, now),
    )
    conn.execute("INSERT INTO replica_api_keys VALUES (?, ?, ?, 'test', ?, NULL)",
                 (key.key_id, user, key.key_hash, now))
    conn.execute("INSERT INTO replica_projects VALUES (?, ?, '', ?, 1, ?, ?)",
                 (f"home-{user}", "Home", user, now, now))
    conn.execute("INSERT INTO replica_members VALUES (?, ?, 'owner')", (f"home-{user}", user))
    conn.close()
    return key.token


def write_config(path: Path, port: int, data_dir: Path, **uploads: object) -> Path:
    lines = [
        "[edge]", f'listen = "tcp:{port}:interface=127.0.0.1"', f'data_dir = "{data_dir}"',
        "[link]", 'url = "amqp://guest:guest@127.0.0.1:9/%2F"',
        "[uploads]", "disk_reserve = 0",
    ]
    lines += [f"{k} = {v}" for k, v in uploads.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_edge(twistd: list[str], config: Path, log: Path,
               env: dict[str, str]) -> subprocess.Popen[bytes]:
    """C{twistd -n relay-edge}, as operators run it."""
    return subprocess.Popen([*twistd, f"--logfile={log}", "relay-edge", "--config", str(config)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def wait_ready(client: TusClient, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the edge exited"
        try:
            if client.request("HEAD", "/files/" + "0" * 32).status == 404:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("the edge did not become ready")
