"""
Downloads against real parts: RabbitMQ (a vhost of the test's own), moto's
S3 server, C{relay-cloud} and two C{relay-edge}s as twistd processes, and
the link emulator between the edges and S3 (and, for the resuming
clients, between the client and the edge).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread

from relay.testing.linkemu import LinkEmulator, LinkProfile
from relay.testing.s3servers import free_port
from relay.testing.transfer_world import Node, read_db
from tests.edge.transfer.world import MotoTestCase, TransferWorld, sleep

#: Small chunks, so that a few MiB already take several streams.
DOWNLOADS = {"chunk_size": 256 << 10, "streams": 4, "stall_timeout": 5.0, "request_timeout": 10.0}


def pseudo_random(size: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


class DownloadWorld(MotoTestCase):
    """The servers and helpers the download tests share."""

    timeout = 240

    async def world(self, s3_link: LinkProfile | None = None, **downloads: Any) -> TransferWorld:
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        world = TransferWorld(root, self.server, s3_link=s3_link or LinkProfile(),
                              downloads={**DOWNLOADS, **downloads})
        self.addCleanup(world.stop)
        await world.start()
        return world

    async def uploaded(
        self, world: TransferWorld, *sizes: int, **more: Any
    ) -> list[tuple[str, str]]:
        staged = [world.stage(size, seed) for seed, size in enumerate(sizes, start=7)]
        world.edge.start()
        await world.wait_done([upload_id for upload_id, _ in staged], timeout=90)
        await self.replicated(world, world.edge_port, len(staged))
        return staged

    async def edge_b(self, world: TransferWorld, files: int = 1, **downloads: Any) -> tuple[Node, int]:
        port = free_port()
        node = world.another_edge("edge-2", port, **downloads)
        node.start()
        await self.replicated(world, port, files)
        return node, port

    async def replicated(
        self, world: TransferWorld, port: int, files: int = 1, timeout: float = 60
    ) -> None:
        waited = 0.0
        while True:
            try:
                code, body = await world.api("GET", "/api/files", port=port)
            except Exception:
                code, body = 0, None
            if (
                code == 200
                and len(body["files"]) >= files
                and all(f["state"] == "stored" for f in body["files"])
            ):
                return
            if waited > timeout:
                raise AssertionError(f"edge on {port} did not replicate the files: {code} {body}")
            await sleep(0.2)
            waited += 0.2

    async def get(self, world: TransferWorld, port: int, file_id: str, headers: dict[str, str] | None = None,
                  method: str = "GET") -> tuple[int, Any, bytes]:
        async def request() -> tuple[int, Any, bytes]:
            response = await treq.request(
                method, f"http://127.0.0.1:{port}/api/v1/files/{file_id}/content",
                headers={"Authorization": [f"Bearer {world.api_key}"],
                         **{k: [v] for k, v in (headers or {}).items()}},
                persistent=False,
            )
            return response.code, response.headers, await response.content()

        answer: Deferred[tuple[int, Any, bytes]] = Deferred.fromCoroutine(request())
        late = reactor.callLater(90, lambda: answer.called or answer.errback(AssertionError("no answer in 90 s")))
        try:
            return await answer
        except Exception as e:
            import shutil
            for n in [world.edge, *world.others]:
                shutil.copy(n.log_path, f"/tmp/debug-{n.cwd.name}.log")
            logs = "\n".join(f"--- {n.plugin} {n.cwd}:\n{n.log_text()[-6000:]}" for n in [world.edge, *world.others])
            raise AssertionError(f"GET {file_id} at {port}: {e!r}\n{logs}") from None
        finally:
            if late.active():
                late.cancel()

    def cache_rows(self, edge_root: Path) -> list[Any]:
        return read_db(edge_root / "edge.db", "SELECT * FROM cache_files")


class UploadsJoinTheCache(DownloadWorld):
    async def test_an_upload_moves_from_the_spool_into_the_cache(self) -> None:
        world = await self.world()
        [(upload_id, sha256)] = await self.uploaded(world, 3 << 20)
        rows = self.cache_rows(world.edge_dir)
        self.assertEqual(
            [(r["file_id"], r["state"], r["sha256"]) for r in rows], [(upload_id, "cached", sha256)]
        )
        code, headers, body = await self.get(world, world.edge_port, upload_id)
        self.assertEqual(code, 200)
        self.assertEqual(hashlib.sha256(body).hexdigest(), sha256)
        self.assertEqual(headers.getRawHeaders("etag"), [f'"{sha256}"'])
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        self.assertEqual(headers.getRawHeaders("accept-ranges"), ["bytes"])
        # Served from the cache: the edge asked the cloud for no URL.
        self.assertEqual(world.edge_metrics().get("relay_download_bytes_fetched"), 0)
        code, body = await world.api("GET", f"/api/files?project={world.project}")
        self.assertEqual(body["files"][0]["cache"], {"state": "cached"})


class AnotherEdgeFetches(DownloadWorld):
    async def test_a_file_uploaded_at_a_is_fetched_at_b_and_resumed_after_resets(self) -> None:
        # Every S3 connection is reset every 2 s on average: each chunk is
        # resumed from the byte it got to.
        world = await self.world(
            LinkProfile(rate_bytes_per_s=2 << 20, reset_mean_s=2.0), prefetch_max_size=0
        )
        [(upload_id, sha256)] = await self.uploaded(world, 12 << 20)
        node, port = await self.edge_b(world)
        code, headers, body = await self.get(world, port, upload_id)
        self.assertEqual(code, 200, body[:500])
        self.assertEqual(len(body), 12 << 20)
        self.assertEqual(hashlib.sha256(body).hexdigest(), sha256)
        self.assertGreater(world.s3_link.counters.resets_injected, 0)
        rows = self.cache_rows(node.cwd / "edge")
        self.assertEqual([(r["state"], r["size"]) for r in rows], [("cached", 12 << 20)])
        # The second time comes from B's cache.
        before = world.s3_link.counters.bytes_to_client
        code, _, again = await self.get(world, port, upload_id, {"Range": "bytes=100-199"})
        self.assertEqual((code, again), (206, body[100:200]))
        self.assertEqual(world.s3_link.counters.bytes_to_client, before)

    async def test_two_clients_of_a_file_being_fetched_share_one_fetch(self) -> None:
        world = await self.world(prefetch_max_size=0)
        [(upload_id, sha256)] = await self.uploaded(world, 6 << 20)
        _, port = await self.edge_b(world)
        world.s3_link.set_profile(LinkProfile(rate_bytes_per_s=1 << 20))
        first, second = await _both(
            self.get(world, port, upload_id), self.get(world, port, upload_id)
        )
        for code, _, body in (first, second):
            self.assertEqual(code, 200)
            self.assertEqual(hashlib.sha256(body).hexdigest(), sha256)
        fetched = world.edge_metrics(port)["relay_download_bytes_fetched"]
        self.assertLess(fetched, 1.2 * (6 << 20), "two clients, one fetch")

    async def test_prefetch_brings_a_new_file_before_anyone_asks(self) -> None:
        world = await self.world()
        node, port = await self.edge_b(world, files=0)
        staged = world.stage(2 << 20, 3)
        world.edge.start()
        await world.wait_done([staged[0]], timeout=60)
        await world.wait_for("prefetched at B", lambda: [r["state"] for r in self.cache_rows(node.cwd / "edge")]
                             == ["cached"], 60)
        code, _, body = await self.get(world, port, staged[0])
        self.assertEqual((code, hashlib.sha256(body).hexdigest()), (200, staged[1]))

    async def test_the_edge_killed_while_prefetching_resumes_after_a_restart(self) -> None:
        world = await self.world()
        [(upload_id, sha256)] = await self.uploaded(world, 8 << 20)
        world.s3_link.set_profile(LinkProfile(rate_bytes_per_s=1 << 20))
        node, port = await self.edge_b(world)
        edge_root = node.cwd / "edge"

        def partly() -> bool:
            rows = self.cache_rows(edge_root)
            return bool(rows) and 0 < rows[0]["fetched"] < rows[0]["size"]

        await world.wait_for("prefetch under way", partly, 60)
        os.kill(node.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        await deferToThread(node.process.wait)  # type: ignore[union-attr]
        got_before = self.cache_rows(edge_root)[0]["fetched"]
        node.start()
        await world.wait_for(
            "prefetch resumed", lambda: self.cache_rows(edge_root)[0]["state"] == "cached", 90
        )
        code, _, body = await self.get(world, port, upload_id)
        self.assertEqual((code, hashlib.sha256(body).hexdigest()), (200, sha256))
        # It resumed: far less than the whole file went again.
        self.assertLess(
            world.edge_metrics(port)["relay_download_bytes_fetched"], (8 << 20) - got_before + (2 << 20)
        )

    async def test_a_flipped_byte_in_the_cache_is_detected_and_the_file_fetched_again(self) -> None:
        world = await self.world(prefetch_max_size=0)
        [(upload_id, sha256)] = await self.uploaded(world, 3 << 20)
        node, port = await self.edge_b(world)
        code, _, body = await self.get(world, port, upload_id)
        self.assertEqual(code, 200)
        # The last byte may reach the client just before the copy counts as cached.
        await world.wait_for("cached at B", lambda: [r["state"] for r in self.cache_rows(node.cwd / "edge")]
                             == ["cached"], 30)
        store_id = self.cache_rows(node.cwd / "edge")[0]["store_id"]
        data = node.cwd / "edge" / "cache" / f"{store_id}.data"
        with open(data, "r+b") as f:
            f.seek(1 << 20)
            byte = f.read(1)
            f.seek(1 << 20)
            f.write(bytes([byte[0] ^ 0x40]))
        code, _, body = await self.get(world, port, upload_id, {"Range": "bytes=1000000-"})
        self.assertEqual(code, 206)
        expected = pseudo_random(3 << 20, 7)
        self.assertEqual(hashlib.sha256(expected).hexdigest(), sha256)
        self.assertEqual(body, expected[1000000:])
        rows = self.cache_rows(node.cwd / "edge")
        self.assertEqual([r["state"] for r in rows], ["cached"])
        self.assertNotEqual(
            rows[0]["store_id"], store_id, "the damaged copy was dropped and fetched again"
        )


class Deletion(DownloadWorld):
    async def test_deleting_a_file_removes_its_object_and_every_cached_copy(self) -> None:
        world = await self.world()
        [(upload_id, _)] = await self.uploaded(world, 1 << 20)
        node, port = await self.edge_b(world)
        await world.wait_for(
            "cached at B", lambda: len(self.cache_rows(node.cwd / "edge")) == 1, 60
        )
        code, _ = await world.api("DELETE", f"/api/files/{upload_id}")
        self.assertEqual(code, 202)

        def gone() -> bool:
            listed = (
                self.server.client().list_objects_v2(Bucket=self.server.bucket).get("Contents", [])
            )
            keys = [o["Key"] for o in listed]
            return (not self.cache_rows(world.edge_dir) and not self.cache_rows(node.cwd / "edge")
                    and world.object_key(upload_id) not in keys)

        try:
            await world.wait_for("object and cached copies gone", gone, 60)
        except AssertionError:
            listed = self.server.client().list_objects_v2(Bucket=self.server.bucket).get("Contents", [])
            raise AssertionError(f"A: {self.cache_rows(world.edge_dir)} B: {self.cache_rows(node.cwd / 'edge')} "
                                 f"S3: {[o['Key'] for o in listed]}\n{world.cloud.log_text()[-3000:]}") from None
        code, _, body = await self.get(world, port, upload_id)
        self.assertEqual(code, 404)
        self.assertEqual(os.listdir(node.cwd / "edge" / "cache"), [])


class DeletedMidDownload(DownloadWorld):
    async def test_a_file_deleted_while_it_is_downloaded_ends_short_and_leaves_no_copy(self) -> None:
        world = await self.world(prefetch_max_size=0)
        [(upload_id, _)] = await self.uploaded(world, 16 << 20)
        node, port = await self.edge_b(world)
        world.s3_link.set_profile(LinkProfile(rate_bytes_per_s=256 << 10))
        answer = Deferred.fromCoroutine(self.get(world, port, upload_id))
        cut: Deferred[Any] = answer.addErrback(lambda failure: failure.value)

        def under_way() -> bool:
            rows = self.cache_rows(node.cwd / "edge")
            return bool(rows) and rows[0]["fetched"] > 0

        await world.wait_for("the download under way", under_way, 60)
        code, _ = await world.api("DELETE", f"/api/files/{upload_id}")
        self.assertEqual(code, 202)
        result = await cut
        # Cut short (never a whole answer for a deleted file), and no copy left.
        self.assertIsInstance(result, AssertionError)
        self.assertIn("ResponseFailed", str(result))
        await world.wait_for("B's copy gone", lambda: not self.cache_rows(node.cwd / "edge"), 60)
        code, _, _ = await self.get(world, port, upload_id)
        self.assertEqual(code, 404)


class Unavailable(DownloadWorld):
    async def test_a_file_the_cloud_cannot_supply_is_a_clear_502_and_nothing_is_cached(
        self,
    ) -> None:
        world = await self.world(prefetch_max_size=0)
        [(upload_id, _)] = await self.uploaded(world, 1 << 20)
        _, port = await self.edge_b(world)
        # The object vanishes behind the registry's back.
        self.server.client().delete_object(
            Bucket=self.server.bucket, Key=world.object_key(upload_id)
        )
        code, headers, body = await self.get(world, port, upload_id)
        self.assertEqual(code, 502, body)
        self.assertIn(b'"code"', body)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        self.assertEqual(self.cache_rows(world.root / "edge-2" / "edge"), [])

    async def test_the_cloud_down_is_a_504(self) -> None:
        world = await self.world(prefetch_max_size=0, request_timeout=3.0)
        [(upload_id, _)] = await self.uploaded(world, 1 << 20)
        _, port = await self.edge_b(world)
        await deferToThread(world.cloud.stop)
        code, _, body = await self.get(world, port, upload_id)
        self.assertEqual(code, 504, body)


class Conformance(DownloadWorld):
    """The HTTP rules against a running edge (the rules one by one: test_http)."""

    async def test_headers_ranges_conditions_and_bad_ids(self) -> None:
        world = await self.world()
        [(upload_id, sha256)] = await self.uploaded(world, 100_000)
        data = pseudo_random(100_000, 7)
        port = world.edge_port
        code, headers, body = await self.get(world, port, upload_id, method="HEAD")
        self.assertEqual((code, body), (200, b""))
        self.assertEqual(headers.getRawHeaders("content-length"), ["100000"])
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/octet-stream"])
        self.assertEqual(headers.getRawHeaders("content-disposition"),
                         ["attachment; filename=\"design.bin\"; filename*=UTF-8''design.bin"])
        modified = headers.getRawHeaders("last-modified")[0]
        etag = f'"{sha256}"'
        code, headers, body = await self.get(world, port, upload_id, {"Range": "bytes=10-19"})
        self.assertEqual((code, body), (206, data[10:20]))
        self.assertEqual(headers.getRawHeaders("content-range"), ["bytes 10-19/100000"])
        code, _, body = await self.get(world, port, upload_id, {"Range": "bytes=-5"})
        self.assertEqual((code, body), (206, data[-5:]))
        code, headers, body = await self.get(world, port, upload_id, {"Range": "bytes=100000-"})
        self.assertEqual(code, 416)
        self.assertEqual(headers.getRawHeaders("content-range"), ["bytes */100000"])
        for ignored in ("bytes=0-1,5-6", "bytes=9-1", "lines=1-2", "bytes=x"):
            code, _, body = await self.get(world, port, upload_id, {"Range": ignored})
            self.assertEqual((code, body), (200, data), ignored)
        code, _, body = await self.get(world, port, upload_id, {"Range": "bytes=10-19", "If-Range": '"old"'})
        self.assertEqual((code, body), (200, data))
        code, _, body = await self.get(world, port, upload_id, {"Range": "bytes=10-19", "If-Range": etag})
        self.assertEqual((code, body), (206, data[10:20]))
        code, _, body = await self.get(world, port, upload_id, {"Range": "bytes=10-19", "If-Range": modified})
        self.assertEqual((code, body), (206, data[10:20]))
        code, headers, body = await self.get(world, port, upload_id, {"If-None-Match": etag})
        self.assertEqual((code, body), (304, b""))
        self.assertEqual(headers.getRawHeaders("etag"), [etag])
        code, _, _ = await self.get(world, port, upload_id, {"If-Match": '"old"'})
        self.assertEqual(code, 412)
        for bad in ("nope", "..%2F..%2Fedge.db", "a" * 200, "%00", upload_id.upper()):
            code, _, body = await self.get(world, port, bad)
            self.assertEqual(code, 404, bad)
        # Without credentials, nothing (and the id's existence is not told).
        response = await treq.get(f"http://127.0.0.1:{port}/api/v1/files/{upload_id}/content", persistent=False)
        self.assertEqual(response.code, 401)
        await response.content()


class ResumingClients(DownloadWorld):
    """
    A 64 MiB file uploaded at edge A is downloaded at edge B by curl, wget
    and aria2c (Debian's), through a proxy that resets every connection
    through it every 0.8 s (a fixed pace, so each client meets several
    resets however fast the machine is); each ends with exactly the right
    bytes.
    """

    async def test_curl_wget_and_aria2c_resume_through_resets(self) -> None:
        world = await self.world(chunk_size=4 << 20, streams=8, prefetch_max_size=0)
        size = 64 << 20
        [(upload_id, sha256)] = await self.uploaded(world, size)
        _, port = await self.edge_b(world)
        # B's fetch from S3 meets resets too.
        world.s3_link.set_profile(LinkProfile(rate_bytes_per_s=16 << 20, reset_mean_s=2.0))
        cutter = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{port}",
                              # All connections together: aria2c's eight must not finish
                              # between two resets.
                              LinkProfile(rate_bytes_per_s=12 << 20, aggregate_bytes_per_s=12 << 20))
        await cutter.start()
        self.addCleanup(cutter.stop)
        cutting = LoopingCall(cutter.reset_all)
        cutting.start(0.8, now=False)
        self.addCleanup(cutting.stop)
        url = f"http://127.0.0.1:{cutter.port}/api/v1/files/{upload_id}/content"
        auth = f"Authorization: Bearer {world.api_key}"
        out = Path(self.mktemp())
        out.mkdir()
        commands = {
            # curl has no retry of its own for a cut body: the loop is the user pressing up-arrow.
            "curl": ["sh", "-c", f"for i in $(seq 100); do curl -sS -f -C - -H '{auth}' -o {out}/curl.bin '{url}'"
                                 f" && exit 0; done; exit 1"],
            "wget": ["wget", "-q", "-c", "--tries=100", "--retry-connrefused", "--waitretry=0",
                     f"--header={auth}", "-O", str(out / "wget.bin"), url],
            "aria2c": ["aria2c", "-q", "-x", "8", "-s", "8", "-k", "1M", "--max-tries=100", "--retry-wait=0",
                       f"--header={auth}", "-d", str(out), "-o", "aria2c.bin", url],
        }
        for name, command in commands.items():
            before = cutter.counters.resets_injected
            done = await deferToThread(subprocess.run, command, capture_output=True, timeout=300)
            self.assertEqual(done.returncode, 0, f"{name}: {done.stderr.decode()[-2000:]}")
            got = await deferToThread(_sha256_of, out / f"{name}.bin")
            self.assertEqual(got, sha256, name)
            self.assertGreater(cutter.counters.resets_injected, before + 1, f"{name} met too few resets")
        self.assertGreater(world.s3_link.counters.resets_injected, 0)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def _both(a: Any, b: Any) -> tuple[Any, Any]:
    from twisted.internet.defer import gatherResults

    results = await gatherResults([Deferred.fromCoroutine(a), Deferred.fromCoroutine(b)])
    return results[0], results[1]
