"""
The transfer stage end to end, against real servers and real faults: files
staged in an edge's spool reach S3 byte-identical through a link emulator
that resets and stalls connections, while the cloud is killed and
restarted, while presigned URLs expire, and across a C{kill -9} of the
edge, which then re-sends no part S3 already had.  A spool copy damaged
mid-transfer fails the upload for good (no retry loop, the multipart upload
aborted), and its owner's retry starts it over once the copy is whole
again.  The spool file is kept until the cloud has registered the file,
and erased after.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import ClassVar

from twisted.internet.threads import deferToThread
from twisted.trial import unittest

from relay.edge.transfer.run import DAMAGED
from relay.testing.linkemu import LinkProfile
from relay.testing.s3servers import S3Server, start_moto, start_rclone
from relay.testing.transfer_world import MiB, read_db, spool_has

from .world import TransferWorld, sleep


class Base(unittest.TestCase):
    timeout = 200
    server: ClassVar[S3Server]
    tmp: ClassVar[tempfile.TemporaryDirectory[str]]

    def world(self, **kwargs: object) -> TransferWorld:
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        world = TransferWorld(root, self.server, **kwargs)  # type: ignore[arg-type]
        self.addCleanup(world.stop)
        return world

    async def check_arrived(self, world: TransferWorld, uploads: dict[str, str]) -> None:
        for upload_id, sha256 in uploads.items():
            self.assertEqual(await world.object_sha256(upload_id), sha256)
            registered = world.cloud_registered(upload_id)
            self.assertIsNotNone(registered, "the registry has the file")
            assert registered is not None
            self.assertEqual(registered[1], sha256)
            self.assertEqual(registered[3], "stored")
            state, transferred, _ = world.upload(upload_id)
            self.assertEqual(state, "in_cloud")
            self.assertFalse(spool_has(world.edge_dir, upload_id), "erased after registration")
        # Presigned URLs never reach a log whole, nor the edge's disk; the
        # edge never sees the S3 secret at all.
        self.assertNotRegex(world.edge.log_text() + world.cloud.log_text(), r"X-Amz-(Signature|Credential)")
        secret = self.server.credentials.secret_access_key.encode()
        for path in [world.root / "edge.toml", world.root / "edge.log", *world.edge_dir.glob("edge.db*")]:
            data = path.read_bytes()
            self.assertNotIn(b"X-Amz-Signature", data, path)
            self.assertNotIn(secret, data, path)


class MotoFaultTests(Base):
    @classmethod
    def setUpClass(cls) -> None:
        # moto's request log is what shows which parts were PUT.
        cls.tmp = tempfile.TemporaryDirectory(prefix="relay-moto-")
        cls.server = start_moto(log_path=Path(cls.tmp.name) / "moto.log")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls.tmp.cleanup()

    async def test_resets_stalls_and_cloud_restarts(self) -> None:
        """
        Two files (50 MiB and 200 MiB) through a link that resets each
        connection every 6 s on average and stalls it every 15 s; the cloud
        is killed (-9) mid-transfer and stays down until the edge has sent
        what it can: the spool files stay, nothing is registered; once the
        cloud is back both files complete, byte-identical.
        """
        world = self.world(
            s3_link=LinkProfile(latency_ms=50, rate_bytes_per_s=3 * MiB, reset_mean_s=6,
                                stall_mean_s=15, stall_duration_s=3),
            amqp_link=LinkProfile(latency_ms=50, reset_mean_s=20),
        )
        await world.start()
        uploads = dict([world.stage(50 * MiB, seed=1), world.stage(200 * MiB + 12345, seed=2)])
        world.edge.start()

        def confirmed() -> int:
            jobs = [world.job(u) for u in uploads]
            return sum(len(j.confirmed_parts) for j in jobs if j is not None)

        await world.wait_for("some parts confirmed", lambda: confirmed() >= 4, 60)
        await deferToThread(world.cloud.kill)
        for upload_id in uploads:
            self.assertTrue(spool_has(world.edge_dir, upload_id))
        # While the cloud is down the edge sends every part it holds a URL
        # for (maybe all of them); nothing may be erased, whatever it sent.
        for _ in range(200):
            if all(getattr(world.job(u), "state", "") == "finishing" for u in uploads):
                break
            await sleep(0.1)
        await sleep(1)
        for upload_id in uploads:
            self.assertTrue(spool_has(world.edge_dir, upload_id), "kept until registered")
            self.assertNotIn(world.job(upload_id).state, ("registered", "done"))  # type: ignore[union-attr]
        world.cloud.start()
        await world.wait_done(list(uploads), 120)
        await self.check_arrived(world, uploads)
        self.assertGreater(world.s3_link.counters.resets_injected, 0)

    async def test_kill_9_resumes_without_resending(self) -> None:
        """
        The edge is killed with SIGKILL while parts are in flight.  After
        the restart it asks S3 what it holds and sends only the rest: the
        bytes that cross the link after the restart are the missing parts'
        and their headers, and no part S3 held is PUT again.
        """
        world = self.world(
            s3_link=LinkProfile(latency_ms=30, rate_bytes_per_s=2 * MiB, reset_mean_s=10),
            # No extra tail copies: every byte after the restart is counted.
            transfer={"concurrency": 4, "tail_copies": 1},
        )
        await world.start()
        upload_id, sha256 = world.stage(96 * MiB, seed=3)
        world.edge.start()
        await world.wait_for("a wave of parts confirmed",
                             lambda: len(getattr(world.job(upload_id), "confirmed_parts", ())) >= 3, 60)
        await deferToThread(world.edge.kill)
        # What the emulator still held of the dead edge's connections drains
        # first; then S3 holds what it will hold.
        await world.wait_for("the dead edge's connections gone", lambda: not world.s3_link.connections, 30)
        job = world.job(upload_id)
        assert job is not None
        self.assertLess(len(job.confirmed_parts), job.part_count, "killed mid-transfer")
        self.assertTrue(spool_has(world.edge_dir, upload_id))
        # What S3 holds now: at least what the journal confirmed.
        rows = read_db(world.root / "cloud" / "cloud.db", "SELECT upload_id FROM transfers WHERE id = ?",
                       (job.transfer_id,))
        held = await deferToThread(self._held, world, upload_id, rows[0][0])
        self.assertTrue(job.confirmed_parts <= set(held))
        missing_bytes = sum(min(8 * MiB, 96 * MiB - (n - 1) * 8 * MiB)
                            for n in range(1, job.part_count + 1) if n not in held)
        # Phase two without faults, so every byte is accounted for.
        world.s3_link.update(reset_mean_s=None)
        before = world.s3_link.counters.bytes_to_upstream
        log_mark = len(self.server.log_path.read_bytes()) if self.server.log_path else 0
        world.edge.start()
        await world.wait_done([upload_id], 90)
        after = world.s3_link.counters.bytes_to_upstream - before
        self.assertGreaterEqual(after, missing_bytes)
        self.assertLess(after, missing_bytes + 64 * 1024, "only the missing parts crossed the link")
        assert self.server.log_path is not None
        put_again = {int(n) for n in re.findall(rb"PUT [^ ]*partNumber=(\d+)[^ ]* HTTP/1.1\" 200",
                                                self.server.log_path.read_bytes()[log_mark:])}
        self.assertFalse(put_again & set(held), "no part S3 held was sent again")
        self.assertEqual(put_again, set(range(1, job.part_count + 1)) - set(held))
        await self.check_arrived(world, {upload_id: sha256})

    async def test_damaged_copy_fails_and_a_retry_completes(self) -> None:
        """
        Bytes of the spool file's last part are damaged while the first
        parts are on their way: the transfer fails at once with a reason
        for people, S3's multipart upload is aborted, nothing more is sent
        (no retry loop), and the spool file stays.  Once the copy is whole
        again, the owner's C{POST /api/uploads/<id>/retry} starts the
        transfer over and the file arrives byte-identical; only then is the
        spool file erased.
        """
        world = self.world(
            s3_link=LinkProfile(latency_ms=20, aggregate_bytes_per_s=4 * MiB),
            transfer={"concurrency": 4, "tail_copies": 1},
        )
        await world.start()
        upload_id, sha256 = world.stage(64 * MiB, seed=5)
        world.edge.start()
        await world.wait_for("the first parts on their way", lambda: getattr(world.job(upload_id), "state", "") ==
                             "sending" and world.s3_link.counters.bytes_to_upstream > 4 * MiB, 60)
        self.assertEqual(len(await deferToThread(self._multipart_uploads, world, upload_id)), 1)
        data = world.edge_dir / "spool" / f"{upload_id}.data"
        offset = data.stat().st_size - 3 * MiB // 2  # in the last part, read last
        original = _flip(data, offset, b"")
        await world.wait_for("the upload failed", lambda: world.upload(upload_id)[0] == "failed", 60)
        state, _, error = world.upload(upload_id)
        self.assertEqual((state, error), ("failed", DAMAGED))
        code, body = await world.api("GET", f"/api/uploads/{upload_id}")
        self.assertEqual((code, body["state"], body["error"]), (200, "failed", DAMAGED))
        # Asked on a thread: boto3 blocks, and this reactor runs the emulator.
        for _ in range(60):
            if not await deferToThread(self._multipart_uploads, world, upload_id):
                break
            await sleep(0.5)
        else:
            self.fail("the multipart upload was not aborted within 30 s")
        # What the emulator held of the cancelled PUTs drains first.
        sent = -1
        for _ in range(40):
            if sent == world.s3_link.counters.bytes_to_upstream:
                break
            sent = world.s3_link.counters.bytes_to_upstream
            await sleep(0.5)
        await sleep(4)  # retries would come within retry_cap (3 s)
        self.assertEqual(world.s3_link.counters.bytes_to_upstream, sent, "no retry loop")
        self.assertEqual(world.job(upload_id).state, "failed")  # type: ignore[union-attr]
        self.assertTrue(spool_has(world.edge_dir, upload_id), "kept whatever fails")
        self.assertIsNone(world.cloud_registered(upload_id))

        _flip(data, offset, original)
        code, body = await world.api("POST", f"/api/uploads/{upload_id}/retry")
        self.assertEqual((code, body["state"], body["error"]), (202, "transferring", None))
        code, body = await world.api("POST", f"/api/uploads/{upload_id}/retry")
        self.assertEqual(code, 409, "not failed any more")
        await world.wait_for("sending again", lambda: getattr(world.job(upload_id), "state", "") in
                             ("sending", "finishing", "registered", "done"), 60)
        self.assertTrue(spool_has(world.edge_dir, upload_id), "kept until registered")
        await world.wait_done([upload_id], 90)
        await self.check_arrived(world, {upload_id: sha256})
        self.assertEqual(await deferToThread(self._multipart_uploads, world, upload_id), [])

    def _multipart_uploads(self, world: TransferWorld, upload_id: str) -> list[str]:
        listed = self.server.client().list_multipart_uploads(Bucket=self.server.bucket)
        return [u["UploadId"] for u in listed.get("Uploads", []) if u["Key"] == world.object_key(upload_id)]

    def _held(self, world: TransferWorld, upload_id: str, s3_upload_id: str) -> dict[int, int]:
        client = self.server.client()
        parts = client.list_parts(Bucket=self.server.bucket, Key=world.object_key(upload_id),
                                  UploadId=s3_upload_id).get("Parts", [])
        return {p["PartNumber"]: p["Size"] for p in parts}


def _flip(path: Path, offset: int, restore: bytes) -> bytes:
    """Damage 16 bytes at C{offset} (or put C{restore} back); returns what was there."""
    with path.open("r+b") as f:
        f.seek(offset)
        before = f.read(16)
        f.seek(offset)
        f.write(restore or bytes(b ^ 0xA5 for b in before))
    return before


class RcloneFaultTests(Base):
    timeout = 240

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="relay-rclone-")
        cls.server = start_rclone(Path(cls.tmp.name) / "objects")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls.tmp.cleanup()

    async def test_one_gib_with_expiring_urls(self) -> None:
        """
        1 GiB to a server that checks every signature, URL expiry and
        Content-MD5, through a link with resets and stalls, with URLs that
        live 4 s (the transfer takes several times that): they are refreshed
        as they age, and the file arrives
        byte-identical.
        """
        world = self.world(
            s3_link=LinkProfile(latency_ms=20, rate_bytes_per_s=5 * MiB, reset_mean_s=8, stall_mean_s=20,
                                stall_duration_s=2),
            amqp_link=LinkProfile(latency_ms=20),
            cloud_s3={"presign_expiry": 4},
        )
        await world.start()
        upload_id, sha256 = world.stage(1024 * MiB, seed=4)
        world.edge.start()
        await world.wait_done([upload_id], 200)
        metrics = world.edge_metrics()
        await self.check_arrived(world, {upload_id: sha256})
        # 128 parts fit in two presign requests of 100 if URLs did not age.
        self.assertGreater(metrics["relay_transfer_presign_requests"], 4)
        self.assertGreater(world.s3_link.counters.resets_injected, 0)
