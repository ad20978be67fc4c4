"""
A real edge for the attack tests: the service tree C{relay-edge} runs
(L{relay.edge.tap.edge_service}), listening on loopback inside the test's
reactor, with its own RabbitMQ vhost, alice seeded into its replica (a
password and an API key), and raw clients that speak to it over sockets
from threads (so that the reactor serving them keeps running).
"""

from __future__ import annotations

import os
import select
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from relay.config import load
from relay.credentials import ScryptCost, hash_password, new_api_key
from relay.edge.config import EdgeConfig
from relay.edge.replica import apply_event
from relay.edge.tap import edge_service
from relay.testing.transfer_world import Vhost
from tests.conftest import free_port

PASSWORD = "alice's password"
ROOT = Path(__file__).resolve().parents[3]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def disk_bytes(*roots: Path) -> int:
    """Bytes the files under C{roots} occupy on disk (allocated blocks)."""
    total = 0
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except FileNotFoundError:
                    pass
    return total


@dataclass
class Exchange:
    """What a raw client saw: the bytes it sent and the answer it read."""

    sent: int
    answer: bytes
    error: str | None

    @property
    def status(self) -> int | None:
        if not self.answer.startswith(b"HTTP/1."):
            return None
        return int(self.answer.split(b" ", 2)[1])

    def header(self, name: str) -> str | None:
        head = self.answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def body(self) -> bytes:
        return self.answer.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.answer else b""


def raw_exchange(
    port: int, head: bytes, body: Any = (), *, source: str = "127.0.0.1", timeout: float = 10.0,
) -> Exchange:
    """
    Send C{head}, then each chunk of C{body} (an iterable of bytes) while
    the server takes them, reading whatever it answers; stop when it has
    closed the connection or C{timeout} passes.  Runs in a thread.
    """
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    sent, answer, error = 0, b"", None
    deadline = time.monotonic() + timeout
    try:
        s.sendall(head)
        chunks = iter(body)
        pending: bytes | None = next(chunks, None)
        while time.monotonic() < deadline:
            want_write = [s] if pending is not None else []
            readable, writable, _ = select.select([s], want_write, [], 0.5)
            if readable:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
            if writable and pending is not None:
                n = s.send(pending)
                sent += n
                pending = pending[n:] or next(chunks, None)
    except OSError as e:
        error = type(e).__name__
        try:
            s.setblocking(False)
            answer += s.recv(65536)
        except OSError:
            pass
    finally:
        s.close()
    return Exchange(sent, answer, error)


def _seed(conn: Any, user_id: str, project_id: str, password_hash: str, key_id: str, key_hash: str) -> None:
    apply_event(conn, "user.put", {"id": user_id, "name": "alice", "password_hash": password_hash,
                                   "is_admin": 0, "disabled": 0, "must_change_password": 0,
                                   "created_at": 1.0, "updated_at": 1.0})
    apply_event(conn, "project.put", {"id": project_id, "name": "Home", "description": "", "owner_id": user_id,
                                      "is_default": 1, "created_at": 1.0, "updated_at": 1.0})
    apply_event(conn, "member.put", {"project_id": project_id, "user_id": user_id, "role": "owner"})
    conn.execute(
        "INSERT INTO replica_api_keys (id, user_id, key_hash, label, created_at) VALUES (?, ?, ?, 'test', 1.0)",
        (key_id, user_id, key_hash),
    )


class SecureEdge:
    """
    One running edge.  C{extra} is TOML appended to its configuration
    (C{[web]} and C{[uploads]} tables); C{link}, the keys of its C{[link]}
    table (by default a vhost of its own on the machine's broker).
    """

    def __init__(
        self, case: TestCase, extra: str = "", data_dir: Path | None = None,
        listen: str = "tcp:{port}:interface=127.0.0.1", link: str | None = None,
    ) -> None:
        self.case = case
        self.directory = Path(case.mktemp()).absolute()
        self.directory.mkdir(parents=True)
        self.data_dir = data_dir or self.directory / "edge"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        if link is None:
            vhost = Vhost().create()
            case.addCleanup(vhost.delete)
            link = f'url = "{vhost.url()}"\n'
        self.config_path = self.directory / "edge.toml"
        self.config_path.write_text(
            f'[edge]\nlisten = "{listen.format(port=self.port)}"\ndata_dir = "{self.data_dir}"\n'
            f'web_dir = "{ROOT / "web"}"\n[link]\n{link}{extra}'
        )
        self.config = load(EdgeConfig, self.config_path)
        self.service = edge_service(self.config, reactor)
        (self.db,) = [s for s in self.service if type(s).__name__ == "Database"]
        self.user_id, self.project_id = uuid.uuid4().hex, uuid.uuid4().hex
        key = new_api_key()
        self.key = key.token
        self.db.run_now(_seed, self.user_id, self.project_id, hash_password(PASSWORD, ScryptCost(4, 1, 1)),
                        key.key_id, key.key_hash)
        self.service.startService()
        case.addCleanup(lambda: Deferred.fromCoroutine(self._stop()))

    async def uploads_ready(self) -> None:
        """Wait until the tus receiver has recovered its spool (503 before)."""
        (uploads,) = [s for s in self.service if type(s).__name__ == "UploadService"]
        for _ in range(200):
            if uploads.ready:
                return
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("the uploads service did not become ready")

    async def _settle_streams(self, count: int) -> None:
        """Wait until C{count} event streams are open."""
        (streams,) = [s for s in self.service if type(s).__name__ == "EventStreams"]
        for _ in range(200):
            if streams.open == count:
                return
            await deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"{streams.open} event streams open, not {count}")

    @property
    def site(self) -> Any:
        (listener,) = [s for s in self.service if hasattr(s, "factory")]
        return listener.factory

    async def _stop(self) -> None:
        if self.service.running:
            await self.service.stopService()
        await self._settle()

    async def _settle(self) -> None:
        """
        Wait until the edge has seen every connection the tests closed.
        """
        for _ in range(100):
            if not self.site.open:
                break
            await deferLater(reactor, 0.05, lambda: None)
        await deferLater(reactor, 0.05, lambda: None)

    def exchange(self, head: bytes, body: Any = (), **kwargs: Any) -> Deferred[Exchange]:
        return deferToThread(raw_exchange, self.port, head, body, **kwargs)

    def request_head(self, method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


def held_for(
    port: int, head: bytes, trickle: bytes, interval: float, *, limit: float, rcvbuf: int | None = None,
    read: int = 0, source: str = "127.0.0.1",
) -> float | None:
    """
    Send C{head}, then C{trickle} one byte per C{interval}; with C{read},
    read that many bytes per interval instead (a slow reader, whose
    receive buffer C{rcvbuf} is small).  Returns the seconds until the
    edge closed the connection, or C{None} if it still held it after
    C{limit} seconds.  Runs in a thread.
    """
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    started = time.monotonic()
    pieces = iter(trickle)
    try:
        s.sendall(head)
        while time.monotonic() - started < limit:
            readable, _, _ = select.select([s], [], [], interval)
            if readable and not read:
                if not s.recv(65536):
                    return time.monotonic() - started
            elif read:
                if not s.recv(read):
                    return time.monotonic() - started
                time.sleep(interval)
            else:
                byte = next(pieces, None)
                if byte is not None:
                    s.send(bytes([byte]))
        return None
    except OSError:
        return time.monotonic() - started
    finally:
        s.close()


def server_sockets(port: int) -> int:
    """
    This process's open sockets whose local port is C{port} (the edge's
    side of its connections, the listener included), from /proc.
    """
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            count += 1
    return count
