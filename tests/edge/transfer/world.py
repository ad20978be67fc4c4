"""
The transfer tests' world: an S3-compatible server, RabbitMQ (a vhost of
the test's own), C{relay-cloud} and C{relay-edge} as real twistd
subprocesses, and link emulators in the test's reactor between the edge and
S3 (part PUTs) and between the edge and the broker.
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from relay.testing.linkemu import LinkEmulator, LinkProfile
from relay.testing.s3servers import S3Server, free_port, start_moto
from relay.testing.transfer_world import (
    AMQP_PORT,
    JobView,
    Node,
    Vhost,
    cloud_node,
    edge_node,
    job_view,
    seed_api_key,
    seed_cloud,
    stage_upload,
    upload_view,
)

#: Short timeouts, so that faults cost seconds, not minutes.
TEST_TRANSFER = {
    "stall_timeout": 8.0, "request_timeout": 15.0, "retry_initial": 0.3, "retry_cap": 3.0,
}


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


class MotoTestCase(unittest.TestCase):
    """A test case with moto's S3 server for the whole class (C{server})."""

    server: ClassVar[S3Server]

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = start_moto()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()


class TransferWorld:
    def __init__(
        self,
        root: Path,
        s3: S3Server,
        *,
        s3_link: LinkProfile,
        amqp_link: LinkProfile | None = None,
        transfer: dict[str, Any] | None = None,
        cloud_s3: dict[str, Any] | None = None,
        seed: int = 1,
        one_bottleneck: bool = False,
        cloud_toml: str = "",
        downloads: dict[str, Any] | None = None,
        receiver: bool = False,
    ) -> None:
        self.root = root
        self.s3 = s3
        self.vhost = Vhost()
        # receiver: the edge sends to the cloud's tus receiver (transfer.mode
        # "tus"), so the emulated international link leads there, not to S3.
        self.receiver_port = free_port() if receiver else None
        upstream = self.receiver_port if self.receiver_port is not None else s3.port
        self.s3_link = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{upstream}",
                                    s3_link, random.Random(seed))
        # one_bottleneck: the part PUTs and the AMQP link share the S3
        # link's aggregate cap, as they share the international link.
        self.amqp_link = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{AMQP_PORT}",
                                      amqp_link or LinkProfile(), random.Random(seed + 1),
                                      shares_link_with=self.s3_link if one_bottleneck else None)
        self._transfer = {**TEST_TRANSFER, "mode": "tus" if receiver else "direct", **(transfer or {})}
        self._cloud_s3 = cloud_s3 or {}
        self._cloud_toml = cloud_toml
        self._downloads = downloads or {}
        self.edge_dir = root / "edge"
        self.edge_port = free_port()

    async def start(self) -> None:
        await deferToThread(self.vhost.create)
        await self.s3_link.start()
        await self.amqp_link.start()
        self.user, self.project = seed_cloud(self.root / "cloud")
        self.api_key = seed_api_key(self.root / "cloud", self.user)
        credentials = self.s3.write_credentials(self.root / "s3-credentials.toml")
        if self.receiver_port is not None:
            self._cloud_toml += (f'\n[receiver]\nlisten = "tcp:{self.receiver_port}:interface=127.0.0.1"\n'
                                 f'public_url = "http://127.0.0.1:{self.s3_link.port}/transfers/"\n')
        self.cloud: Node = cloud_node(self.root, amqp_url=self.vhost.url(), listen_port=free_port(), s3={
            "bucket": self.s3.bucket, "endpoint_url": self.s3.endpoint, "addressing_style": "path",
            "presign_endpoint_url": f"http://127.0.0.1:{self.s3_link.port}",
            "credentials_file": str(credentials), **self._cloud_s3,
        }, more_toml=self._cloud_toml)
        self.edge: Node = edge_node(self.root, edge_id="edge-1", amqp_url=self.vhost.url(self.amqp_link.port),
                                    listen_port=self.edge_port, transfer=self._transfer,
                                    downloads=self._downloads)
        self.others: list[Node] = []
        self.cloud.start()

    def another_edge(self, edge_id: str, port: int, **downloads: Any) -> Node:
        """
        A second edge (not started) on the same cloud, its state in
        C{root/<edge_id>}, reaching S3 through the same link emulator.
        """
        root = self.root / edge_id
        root.mkdir(exist_ok=True)
        node = edge_node(root, edge_id=edge_id, amqp_url=self.vhost.url(self.amqp_link.port), listen_port=port,
                         transfer=self._transfer, downloads={**self._downloads, **downloads})
        self.others.append(node)
        return node

    async def stop(self) -> None:
        for node in (*getattr(self, "others", ()), getattr(self, "edge", None), getattr(self, "cloud", None)):
            if node is not None:
                await deferToThread(node.stop)
        await self.s3_link.stop()
        await self.amqp_link.stop()
        await deferToThread(self.vhost.delete)

    def stage(self, size: int, seed: int, **more: Any) -> tuple[str, str]:
        return stage_upload(self.edge_dir, size, seed=seed, owner=self.user, project=self.project, **more)

    def job(self, upload_id: str) -> JobView | None:
        return job_view(self.edge_dir, upload_id)

    def upload(self, upload_id: str) -> tuple[str, int, str]:
        return upload_view(self.edge_dir, upload_id)

    async def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        waited = 0.0
        while not predicate():
            for node in (self.edge, self.cloud):
                if node.process is not None and not node.alive and node.process.returncode not in (-9, 0):
                    raise AssertionError(f"{node.plugin} exited ({node.process.returncode}):\n"
                                         f"{node.log_text()[-3000:]}")
            if waited >= timeout:
                raise AssertionError(f"{what}: not within {timeout}s; edge log:\n{self.edge.log_text()[-4000:]}")
            await sleep(0.1)
            waited += 0.1

    async def wait_done(self, upload_ids: list[str], timeout: float) -> None:
        def done() -> bool:
            jobs = [self.job(u) for u in upload_ids]
            failed = [j for j in jobs if j is not None and j.state == "failed"]
            if failed:
                raise AssertionError(f"a transfer failed: {[self.upload(u) for u in upload_ids]}")
            return all(j is not None and j.state == "done" for j in jobs)

        await self.wait_for("transfers done", done, timeout)

    def object_key(self, upload_id: str) -> str:
        return f"projects/{self.project}/files/{upload_id}"

    async def object_sha256(self, upload_id: str) -> str:
        def work() -> str:
            body = self.s3.client().get_object(Bucket=self.s3.bucket, Key=self.object_key(upload_id))["Body"]
            digest = hashlib.sha256()
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
            return digest.hexdigest()

        return await deferToThread(work)

    async def api(self, method: str, path: str, body: Any = None, port: int | None = None) -> tuple[int, Any]:
        """The edge's JSON API, with the user's API key."""
        port = port or self.edge_port
        response = await treq.request(method, f"http://127.0.0.1:{port}{path}", json=body,
                                      headers={"Authorization": [f"Bearer {self.api_key}"]}, persistent=False)
        body = await response.content()
        return response.code, json.loads(body) if body else None

    def edge_metrics(self, port: int | None = None) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port or self.edge_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                values[name] = float(value)
        return values

    def cloud_registered(self, upload_id: str) -> tuple[Any, ...] | None:
        from relay.testing.transfer_world import read_db

        rows = read_db(self.root / "cloud" / "cloud.db",
                       "SELECT size, sha256, object_key, state FROM files WHERE id = ?", (upload_id,))
        return tuple(rows[0]) if rows else None
