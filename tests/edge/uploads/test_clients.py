"""
Real tus clients against the uploads component on a real loopback port:
tuspy (Python) and tus-js-client (node, from web/node_modules, as Uppy
uses it), the latter through the link emulator, which cuts its single
PATCH mid-body.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from tusclient import client as tusclient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from relay.testing.linkemu import LinkEmulator, LinkProfile

from .harness import KEY, Edge, random_bytes
from .test_http import EdgeTestCase

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("js") / "tus_upload.mjs"


class RealClientTestCase(EdgeTestCase):
    async def edge(self, *args: object, **kwargs: object) -> Edge:  # type: ignore[override]
        return await super().edge(*args, listen=True, **kwargs)  # type: ignore[arg-type]


class TuspyTests(RealClientTestCase):
    async def test_chunked_upload_with_checksums(self) -> None:
        edge = await self.edge()
        data = random_bytes(1_000_003)

        def upload() -> str:
            c = tusclient.TusClient(edge.url + "/files/", headers={"Authorization": f"Bearer {KEY}"})
            uploader = c.uploader(file_stream=io.BytesIO(data), chunk_size=64_000,
                                  upload_checksum=True, metadata={"filename": "a b.bin"})
            uploader.upload()
            return str(uploader.url)

        url = await deferToThread(upload)
        self.assertEqual(edge.stored(url), data)
        staged = list(edge.sink.staged.values())
        self.assertEqual((len(staged), staged[0].filename), (1, "a b.bin"))

    async def test_stop_at_and_resume_by_a_new_client(self) -> None:
        edge = await self.edge()
        data = random_bytes(700_000)
        headers = {"Authorization": f"Bearer {KEY}"}

        def first() -> str:
            c = tusclient.TusClient(edge.url + "/files/", headers=headers)
            uploader = c.uploader(file_stream=io.BytesIO(data), chunk_size=100_000,
                                  upload_checksum=True)
            uploader.upload(stop_at=300_000)
            assert uploader.offset == 300_000
            return str(uploader.url)

        url = await deferToThread(first)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "300000")

        def second() -> int:
            c = tusclient.TusClient(edge.url + "/files/", headers=headers)
            uploader = c.uploader(file_stream=io.BytesIO(data), url=url, chunk_size=150_000,
                                  upload_checksum=True)
            resumed_at = int(uploader.offset)
            uploader.upload()
            return resumed_at

        self.assertEqual(await deferToThread(second), 300_000)
        self.assertEqual(edge.stored(url), data)


class _Node(ProcessProtocol):
    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []
        self.err = b""
        self._partial = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        self.events.extend(json.loads(line) for line in lines if line.strip())

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value.exitCode)


class TusJsClientTests(RealClientTestCase):
    timeout = 120

    def setUp(self) -> None:
        self.node = shutil.which("node")
        # A missing client is a failure, not a skip: `make test` installs both.
        if self.node is None or not (ROOT / "web/node_modules/tus-js-client").is_dir():
            self.fail("node and web/node_modules are needed (make setup runs npm ci in web/)")

    def run_node(self, endpoint: str, path: Path, **options: object) -> _Node:
        options_file = path.with_suffix(".json")
        options_file.write_text(json.dumps({"endpoint": endpoint, "file": str(path),
                                            "key": KEY, **options}))
        protocol = _Node()
        reactor.spawnProcess(protocol, self.node, [self.node, str(SCRIPT), str(options_file)],
                             env={"PATH": "/usr/bin:/bin"})
        return protocol

    async def test_single_patch_cut_mid_body_resumes_byte_identical(self) -> None:
        edge = await self.edge()
        emulator = LinkEmulator(
            reactor, listen="tcp:0:interface=127.0.0.1",
            connect=f"tcp:127.0.0.1:{edge.port.getHost().port}",
            profile=LinkProfile(latency_ms=5, rate_bytes_per_s=6_000_000),
        )
        await emulator.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(emulator.stop()))
        data = random_bytes(8 << 20)
        path = Path(self.mktemp())
        path.write_bytes(data)
        node = self.run_node(f"http://127.0.0.1:{emulator.port}/files/", path)

        # Cut the link once the edge holds a good part of the single PATCH.
        def well_under_way() -> bool:
            self.assertFalse(node.ended.called, node.events)
            leases = edge.service.locks.active()
            return bool(leases and (leases[0].offset or 0) >= 3 << 20)

        await edge.eventually(well_under_way)
        self.assertEqual(emulator.reset_all(), 1)

        self.assertEqual(await node.ended, 0, (node.events, node.err))
        url = next(e["url"] for e in node.events if e["event"] == "success")
        patches = [e for e in node.events if e["event"] == "request" and e["method"] == "PATCH"]
        self.assertGreaterEqual(len(patches), 2)
        self.assertEqual(patches[0]["offset"], "0")
        # The retry continued from the bytes the edge kept, not from zero.
        self.assertGreaterEqual(int(patches[1]["offset"]), 3 << 20)
        self.assertEqual(edge.stored(str(url)), data)
        self.assertEqual(emulator.counters.resets_injected, 1)

    async def test_parallel_upload_uses_concatenation(self) -> None:
        edge = await self.edge()
        data = random_bytes(3_000_001)
        path = Path(self.mktemp())
        path.write_bytes(data)
        node = self.run_node(edge.url + "/files/", path, parallelUploads=3)
        self.assertEqual(await node.ended, 0, (node.events, node.err))
        url = str(next(e["url"] for e in node.events if e["event"] == "success"))
        concat = [e["concat"] for e in node.events if e["event"] == "request" and e["method"] == "POST"]
        self.assertEqual(concat.count("partial"), 3)
        self.assertTrue(any(str(c).startswith("final;") for c in concat))
        self.assertEqual((await edge.head(url)).header("Upload-Concat")[:6], "final;")
        self.assertEqual(edge.stored(url), data)
        self.assertEqual(len(edge.sink.staged), 1)
