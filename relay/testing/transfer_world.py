"""
A whole transfer path on one machine, for the transfer tests and
C{bench/transfer.py}: a RabbitMQ vhost of its own, C{twistd relay-cloud}
and C{twistd relay-edge} as subprocesses (so they can be killed for real),
and helpers that stage an upload in an edge's spool the way the tus
receiver leaves it, seed the cloud's registry, and read both sides' state.

Everything here is blocking and runs before or between reactor turns; the
link emulators live in the caller's reactor.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from twisted.internet.task import Clock

from relay.crypto import load_or_create_master_key
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import Upload, UploadState, UploadStore
from relay.testing.db import SynchronousDatabase

BIN = Path(sys.executable).parent
MiB = 1 << 20
AMQP_PORT = int(os.environ.get("RELAY_TEST_AMQP_PORT", "5672"))


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-s", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Vhost:
    """A RabbitMQ vhost for one test: nothing else's queues, nothing left behind."""

    name: str = field(default_factory=lambda: f"relay-test-{uuid.uuid4().hex[:10]}")

    def create(self) -> Vhost:
        rabbitmqctl("add_vhost", self.name)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    def delete(self) -> None:
        try:
            rabbitmqctl("delete_vhost", self.name)
        except RuntimeError:
            pass

    def url(self, port: int = AMQP_PORT) -> str:
        return f"amqp://guest:guest@127.0.0.1:{port}/{self.name}"


def pattern(seed: int, size: int, block: int = MiB) -> Iterator[bytes]:
    """Reproducible pseudo-random bytes, one block at a time."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        take = min(block, left)
        yield rng.randbytes(take)
        left -= take


def stage_upload(data_dir: Path, size: int, *, seed: int, owner: str, project: str,
                 filename: str = "design.bin", content: bytes | None = None) -> tuple[str, str]:
    """
    Put a complete upload of C{size} pseudo-random bytes in the edge's spool
    and its record, C{staged}, as the tus receiver leaves it: the edge hands
    it to the transfer stage when it starts.  Returns (upload id, sha256).
    C{content}, if given, is the upload's bytes instead (C{size} ignored).
    """
    from relay.edge.tap import SCHEMAS

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    spool_dir = data_dir / "spool"
    key = load_or_create_master_key(data_dir / "spool.key", outside=spool_dir)
    upload_id = secrets.token_hex(16)
    digest = hashlib.sha256()
    writer = Spool(spool_dir, key).create(upload_id)
    if content is not None:
        size = len(content)
    for block in pattern(seed, size) if content is None else [content]:
        digest.update(block)
        writer.write(block)
    writer.finalize()
    writer.close()
    db = SynchronousDatabase(data_dir / "edge.db", SCHEMAS)
    try:
        now = time.time()
        UploadStore(db).add(Upload(
            id=upload_id, owner=owner, project=project, filename=filename, filetype="application/octet-stream",
            length=size, offset=size, state=UploadState.STAGED, created=now, updated=now,
        ))
    finally:
        db.close()
    return upload_id, digest.hexdigest()


def seed_cloud(data_dir: Path, name: str = "alice", *, user_id: str | None = None,
               project_id: str | None = None) -> tuple[str, str]:
    """
    A user with their default project in the cloud's registry (before the
    cloud starts), and the project C{project_id} if given; returns (user
    id, project id).
    """
    from relay.cloud.registry import Registry
    from relay.cloud.sync import EventLog
    from relay.cloud.tap import SCHEMAS

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = SynchronousDatabase(data_dir / "cloud.db", SCHEMAS)
    clock = Clock()
    clock.advance(time.time())
    registry = Registry(EventLog(clock), clock)
    try:
        user: Any = db.run(lambda conn: registry.add_user(conn, name, "not-a-login", user_id=user_id)).result
        if project_id is not None:
            db.run(lambda conn: registry.create_project(conn, user["id"], "Uploads", project_id=project_id))
            return str(user["id"]), project_id
        row = db.conn.execute("SELECT id FROM projects WHERE owner_id = ? AND is_default = 1",
                              (user["id"],)).fetchone()
        return str(user["id"]), str(row[0])
    finally:
        db.close()


def seed_api_key(data_dir: Path, user_id: str) -> str:
    """
    An API key for the user in the cloud's registry (before the cloud
    starts; it reaches the edge through sync); returns its token.
    """
    from relay.cloud.registry import Registry
    from relay.cloud.sync import EventLog
    from relay.cloud.tap import SCHEMAS

    db = SynchronousDatabase(data_dir / "cloud.db", SCHEMAS)
    clock = Clock()
    clock.advance(time.time())
    try:
        key: Any = db.run(lambda conn: Registry(EventLog(clock), clock).create_key(conn, user_id, "test")).result
        return str(key.token)
    finally:
        db.close()


def read_db(path: Path, query: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Read another process's SQLite database (WAL: readers never block it)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


@dataclass(frozen=True)
class JobView:
    state: str
    transfer_id: str
    confirmed_bytes: int
    confirmed_parts: frozenset[int]
    part_count: int
    restarts: int


def job_view(data_dir: Path, upload_id: str) -> JobView | None:
    """The edge's transfer journal entry for an upload."""
    db = data_dir / "edge.db"
    try:
        rows = read_db(db, "SELECT state, transfer_id, confirmed_bytes, part_count, restarts "
                           "FROM transfer_jobs WHERE upload_id = ?", (upload_id,))
        if not rows:
            return None
        parts = read_db(db, "SELECT number FROM transfer_parts WHERE upload_id = ? AND confirmed = 1",
                        (upload_id,))
    except sqlite3.OperationalError:
        return None  # not created yet
    row = rows[0]
    return JobView(row["state"], row["transfer_id"], row["confirmed_bytes"],
                   frozenset(r[0] for r in parts), row["part_count"], row["restarts"])


def upload_view(data_dir: Path, upload_id: str) -> tuple[str, int, str]:
    """(state, transferred, error) of the upload's record at the edge."""
    row = read_db(data_dir / "edge.db", "SELECT state, transferred, error FROM uploads WHERE id = ?",
                  (upload_id,))[0]
    return row["state"], row["transferred"], row["error"]


def spool_has(data_dir: Path, upload_id: str) -> bool:
    return (data_dir / "spool" / f"{upload_id}.key").exists()


class Node:
    """
    One twistd process (C{relay-edge} or C{relay-cloud}) with its
    configuration file and log.
    """

    def __init__(self, plugin: str, config: Path, log: Path, cwd: Path) -> None:
        self.plugin = plugin
        self.config = config
        self.log_path = log
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> Node:
        assert self.process is None or self.process.poll() is not None
        self._log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"}
        self.process = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", self.plugin, "--config", str(self.config)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.cwd, env=env,
        )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """C{kill -9}: no clean-up of any kind."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._close_log()

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()
        return None if self.process is None else self.process.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def edge_node(root: Path, *, edge_id: str, amqp_url: str, listen_port: int,
              transfer: dict[str, Any] | None = None, downloads: dict[str, Any] | None = None) -> Node:
    config = write_config(root / "edge.toml", {
        "edge": {"id": edge_id, "listen": f"tcp:{listen_port}:interface=127.0.0.1",
                 "data_dir": str(root / "edge")},
        "link": {"url": amqp_url, "heartbeat": 2},
        "transfer": transfer or {},
        "downloads": downloads or {},
    })
    return Node("relay-edge", config, root / "edge.log", root)


def cloud_node(root: Path, *, amqp_url: str, listen_port: int, s3: dict[str, Any], more_toml: str = "") -> Node:
    """
    A C{relay-cloud} node; C{more_toml} is appended to its configuration
    (the C{[jobs]} tables).
    """
    config = write_config(root / "cloud.toml", {
        "cloud": {"listen": f"tcp:{listen_port}:interface=127.0.0.1", "data_dir": str(root / "cloud")},
        "link": {"url": amqp_url, "heartbeat": 2},
        "s3": s3,
    })
    if more_toml:
        config.write_text(config.read_text() + "\n" + more_toml)
    return Node("relay-cloud", config, root / "cloud.log", root)
