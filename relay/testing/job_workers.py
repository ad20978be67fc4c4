"""
Jobs scaled out, on one machine, for the worker tests and
C{bench/jobs_workers.py}: a RabbitMQ vhost of its own, the registry on
PostgreSQL, an S3-compatible server, one C{relay-cloud} that queues jobs
(C{role = "dispatch"}), any number of C{relay-cloud} workers (C{role =
"worker"}), each its own process sharing the registry, and one
C{relay-edge} whose API submits the jobs.

Everything here blocks (subprocesses, C{urllib}, C{psycopg}); nothing needs
a reactor in the caller.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.testing.s3servers import S3Server, free_port
from relay.testing.transfer_world import Node, Vhost, edge_node, rabbitmqctl, write_config

#: Kinds for the tests: C{tick} appends a line to the side file and ends;
#: C{slow} writes a line when it starts (with its pid) and one when it ends,
#: C{seconds} apart.  C{{side}} is replaced by the side file's path.
KINDS_TOML = """
[jobs.kinds.tick]
description = "Appends one line (its tag) to the side file."
command = ["sh", "-c", "echo \\"$0\\" >> {side}", "{{tag}}"]
timeout = 60.0
attempts = 3
parameters = {{ type = "object", required = ["tag"], additionalProperties = false, properties.tag = {{ type = "string", pattern = "^[a-z0-9-]+$" }} }}

[jobs.kinds.slow]
description = "A line when it starts, and one when it ends, seconds later."
command = ["sh", "-c", "echo \\"$0 start $$\\" >> {side}; sleep \\"$1\\"; echo \\"$0 end $$\\" >> {side}; echo \\"$0\\" > out.txt", "{{tag}}", "{{seconds}}"]
results = ["out.txt"]
timeout = 120.0
attempts = 3
parameters = {{ type = "object", required = ["tag", "seconds"], additionalProperties = false, properties.tag = {{ type = "string", pattern = "^[a-z0-9-]+$" }}, properties.seconds = {{ type = "integer", minimum = 0, maximum = 100 }} }}
"""


def registry_rows(dsn: str, query: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """
    Read the registry on PostgreSQL (relay's C{?} placeholders).
    """
    import psycopg
    from psycopg.rows import dict_row

    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        return list(conn.execute(query.replace("?", "%s"), args).fetchall())


def seed_registry(dsn: str) -> tuple[str, str, str]:
    """
    The registry's tables, a user with their default project and an API
    key, before any cloud starts; returns (user id, project id, API key).
    """
    from twisted.internet.task import Clock

    from relay.cloud.registry import Registry
    from relay.cloud.sync import EventLog
    from relay.cloud.tap import SCHEMAS
    from relay.testing.db import SynchronousDatabase

    db = SynchronousDatabase(dsn, SCHEMAS)
    clock = Clock()
    clock.advance(time.time())
    registry = Registry(EventLog(clock), clock)
    try:
        user = db.run_now(registry.add_user, "alice", "not-a-login")
        project = db.run_now(
            lambda c: c.execute("SELECT id FROM projects WHERE owner_id = ? AND is_default = 1", (user["id"],))
            .fetchone()[0]
        )
        key = db.run_now(registry.create_key, user["id"], "bench")
        return str(user["id"]), str(project), str(key.token)
    finally:
        db.close()


class WorkersWorld:
    """
    One dispatching cloud, C{workers} worker clouds and an edge, sharing
    the registry at C{dsn}.

    @param jobs: more keys of each worker's C{[jobs]} table.
    @param kinds_toml: more C{[jobs.kinds.NAME]} tables, for every cloud.
    """

    def __init__(
        self, root: Path, s3: S3Server, dsn: str, *, workers: int = 2, slots: int = 2, lease: float = 4.0,
        grace: float = 1.0, jobs: dict[str, Any] | None = None, kinds_toml: str = "",
    ) -> None:
        self.root = root
        self.s3 = s3
        self.dsn = dsn
        self.vhost = Vhost()
        self.side = root / "side.txt"
        self._count = workers
        self._slots = slots
        self._lease = lease
        self._grace = grace
        self._jobs = jobs or {}
        self._kinds_toml = kinds_toml
        self.workers: list[Node] = []
        self.edge_port = free_port()
        #: Each cloud's health and metrics port, by name.
        self.status_ports: dict[str, int] = {}

    def start(self, *, workers: bool = True) -> None:
        """
        Start everything (the workers only if C{workers}: else call
        L{start_workers} later); returns once the edge is ready.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.side.touch()
        self.vhost.create()
        self.user, self.project, self.api_key = seed_registry(self.dsn)
        self.dispatcher = self._cloud("dispatch", "dispatch").start()
        self.workers = [self._cloud(f"w{number}", "worker") for number in range(1, self._count + 1)]
        if workers:
            self.start_workers()
        self.edge: Node = edge_node(self.root, edge_id="edge-1", amqp_url=self.vhost.url(),
                                    listen_port=self.edge_port)
        self.edge.start()
        self.wait_for("the edge knows the user and the kinds", self._edge_ready, 60)

    def start_workers(self) -> None:
        for worker in self.workers:
            if not worker.alive:
                worker.start()

    def _cloud(self, name: str, role: str) -> Node:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        credentials = self.s3.write_credentials(directory / "s3-credentials.toml")
        self.status_ports[name] = free_port()
        config = write_config(directory / "cloud.toml", {
            "cloud": {"listen": f"tcp:{self.status_ports[name]}:interface=127.0.0.1",
                      "data_dir": str(directory / "data")},
            "link": {"url": self.vhost.url(), "heartbeat": 2},
            "s3": {"bucket": self.s3.bucket, "endpoint_url": self.s3.endpoint, "addressing_style": "path",
                   "credentials_file": str(credentials)},
            "registry": {"dsn": self.dsn},
            "jobs": {"role": role, "slots": self._slots, "lease": self._lease, "grace": self._grace,
                     "worker_name": name, "work_dir": str(directory / "work"),
                     **(self._jobs if role == "worker" else {})},
        })
        config.write_text(config.read_text() + KINDS_TOML.format(side=self.side) + self._kinds_toml)
        return Node("relay-cloud", config, directory / "cloud.log", directory)

    def stop(self) -> None:
        for node in [getattr(self, "edge", None), *self.workers, getattr(self, "dispatcher", None)]:
            if node is not None:
                if node.process is not None and node.process.poll() is None:
                    os.kill(node.process.pid, signal.SIGCONT)  # a stopped one must hear the SIGTERM
                node.stop()
        self.vhost.delete()

    # -- the edge's API --------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.edge_port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def _edge_ready(self) -> bool:
        try:
            code, answer = self.api("GET", "/api/v1/job-kinds")
        except (urllib.error.URLError, ConnectionError):
            return False
        return code == 200 and len(answer["kinds"]) >= 2

    def submit(self, kind: str, inputs: tuple[str, ...] = (), **parameters: Any) -> str:
        code, answer = self.api("POST", "/api/v1/jobs", {"project_id": self.project, "kind": kind,
                                                         "parameters": parameters, "inputs": list(inputs)})
        if code != 202:
            raise AssertionError(f"submit {kind} {parameters}: {code} {answer}")
        return str(answer["job"]["id"])

    def put_input(self, name: str, data: bytes) -> str:
        """
        A stored file of the project (in S3 and the registry, as a transfer
        leaves it); returns its id once the edge knows it.
        """
        import hashlib

        from twisted.internet.task import Clock

        from relay.cloud.objects import object_key
        from relay.cloud.registry import Registry, new_id
        from relay.cloud.sync import EventLog
        from relay.testing.db import SynchronousDatabase

        file_id = new_id()
        key = object_key(self.project, file_id)
        self.s3.client().put_object(Bucket=self.s3.bucket, Key=key, Body=data)
        db = SynchronousDatabase(self.dsn)
        clock = Clock()
        clock.advance(time.time())
        try:
            db.run_now(lambda c: Registry(EventLog(clock), clock).put_file(
                c, self.project, name, len(data), sha256=hashlib.sha256(data).hexdigest(), object_key=key,
                file_id=file_id,
            ))
        finally:
            db.close()

        def known() -> bool:
            code, answer = self.api("GET", f"/api/files?project={self.project}")
            return code == 200 and file_id in [f["id"] for f in answer["files"]]

        self.wait_for("the edge knows the input", known, 30)
        return file_id

    def result(self, job_id: str, suffix: str) -> bytes:
        """
        The bytes of the job's result file whose name ends in C{suffix}.
        """
        for file_id in json.loads(self.jobs()[job_id]["result_files"]):
            (row,) = registry_rows(self.dsn, "SELECT name, object_key FROM files WHERE id = ?", (file_id,))
            if row["name"].endswith(suffix):
                body = self.s3.client().get_object(Bucket=self.s3.bucket, Key=row["object_key"])["Body"]
                return bytes(body.read())
        raise AssertionError(f"job {job_id} has no result ending in {suffix}")

    # -- what happened ---------------------------------------------------------

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in registry_rows(self.dsn, "SELECT * FROM jobs")}

    def state(self, job_id: str) -> str | None:
        """
        The job's state in the registry (C{None} before its command arrived).
        """
        rows = registry_rows(self.dsn, "SELECT state FROM jobs WHERE id = ?", (job_id,))
        return str(rows[0]["state"]) if rows else None

    def run_of(self, job_id: str) -> dict[str, Any]:
        (row,) = registry_rows(self.dsn, "SELECT * FROM job_runs WHERE job_id = ?", (job_id,))
        return row

    def side_lines(self) -> list[str]:
        return self.side.read_text().splitlines()

    def worker_running(self, pid: int) -> Node | None:
        """
        The worker whose job process (a shepherd's child) has C{pid}.
        """
        shepherd = _parent(pid)
        worker = None if shepherd is None else _parent(shepherd)
        return next((w for w in self.workers if w.process is not None and w.process.pid == worker), None)

    def metric(self, name: str, metric: str) -> float:
        """
        One metric of cloud C{name} (C{dispatch}, C{w1} ...).
        """
        with urllib.request.urlopen(f"http://127.0.0.1:{self.status_ports[name]}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(metric + " "):
                    return float(line.split()[1])
        raise AssertionError(f"no metric {metric} at {name}")

    def unacknowledged(self, queue: str = "relay.jobs") -> int:
        """
        C{rabbitmqctl list_queues -p VHOST name messages_unacknowledged}.
        """
        for line in rabbitmqctl("list_queues", "-p", self.vhost.name, "name", "messages_unacknowledged").splitlines():
            name, _, count = line.partition("\t")
            if name == queue:
                return int(count)
        raise AssertionError(f"no queue {queue} in {self.vhost.name}")

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float) -> float:
        """
        Poll C{predicate} until it holds; returns when (monotonic seconds).
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            for node in [getattr(self, "edge", None), getattr(self, "dispatcher", None), *self.workers]:
                if node is not None and node.process is not None and node.process.poll() not in (None, -9):
                    raise AssertionError(f"{node.log_path} exited ({node.process.returncode}):\n"
                                         f"{node.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s")
            time.sleep(0.1)
        return time.monotonic()


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
