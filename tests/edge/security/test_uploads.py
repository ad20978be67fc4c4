"""
Uploads under attack, against a running edge: many tiny creations (disk
in proportion to what arrived), the per-user cap on unfinished uploads
(concurrent creations included), and an honest client on a slow, bursty
link that must keep uploading while the rate limits hold.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator

import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase

from tests.edge.security.world import SecureEdge, disk_bytes

MiB = 1 << 20


class UploadCostTests(TestCase):
    timeout = 120

    def tus(self, edge: SecureEdge, **extra: str) -> dict[str, str]:
        return {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {edge.key}",
                **{k.replace("_", "-"): v for k, v in extra.items()}}

    async def create(self, edge: SecureEdge, length: int = 1) -> tuple[int, bytes]:
        response = await treq.post(f"{edge.base}/files/", headers=self.tus(edge, Upload_Length=str(length)),
                                   persistent=False)
        return response.code, await response.content()

    async def test_300_tiny_creations_cost_under_10_mib(self) -> None:
        edge = SecureEdge(self, "[uploads]\nmax_unfinished = 1000\n")
        await edge.uploads_ready()

        def checkpoint(conn: object) -> None:
            # The write-ahead log is bounded (it is folded back at 4 MiB),
            # not a cost of each upload: measure the database without it.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # type: ignore[attr-defined]

        await edge.db.read(checkpoint)
        before = disk_bytes(edge.data_dir)
        started = time.monotonic()
        for _ in range(300):
            code, content = await self.create(edge)
            self.assertEqual(code, 201, content)
        elapsed = time.monotonic() - started
        await edge.db.read(checkpoint)
        cost = disk_bytes(edge.data_dir) - before
        self.assertLess(cost, 10 * MiB, f"{cost} bytes for 300 uploads of 1 byte")
        spool = disk_bytes(edge.data_dir / "spool")
        self.assertLess(spool / 300, 32 * 1024, "per upload, the spool holds a few blocks")
        print(f"300 creations: {elapsed:.2f} s, {cost} bytes on disk ({spool} in the spool)")

    async def test_unfinished_uploads_are_capped_per_user(self) -> None:
        edge = SecureEdge(self, "[uploads]\nmax_unfinished = 5\n")
        await edge.uploads_ready()
        answers = await gatherResults([Deferred.fromCoroutine(self.create(edge, 10)) for _ in range(20)])
        codes = sorted(code for code, _ in answers)
        self.assertEqual(codes, [201] * 5 + [429] * 15)
        refusal = next(content for code, content in answers if code == 429)
        self.assertIn(b"unfinished uploads", refusal)
        count = edge.db.run_now(lambda c: c.execute("SELECT count(*) FROM uploads").fetchone()[0])
        self.assertEqual(count, 5)
        # Finishing one makes room.
        url = edge.db.run_now(lambda c: c.execute("SELECT id FROM uploads").fetchone()[0])
        response = await treq.patch(f"{edge.base}/files/{url}", data=b"x" * 10, persistent=False,
                                    headers=self.tus(edge, Upload_Offset="0",
                                                     Content_Type="application/offset+octet-stream"))
        self.assertEqual(response.code, 204)
        self.assertEqual((await self.create(edge))[0], 201)


SLOW = """
[web]
rate_window = 1.0
min_rate = 1024
"""


class HonestClientTests(TestCase):
    timeout = 60

    async def test_a_bursty_slow_link_keeps_uploading(self) -> None:
        edge = SecureEdge(self, SLOW)
        await edge.uploads_ready()
        data = secrets.token_bytes(96 * 1024)
        response = await treq.post(f"{edge.base}/files/", persistent=False, headers={
            "Tus-Resumable": "1.0.0", "Authorization": f"Bearer {edge.key}", "Upload-Length": str(len(data))})
        self.assertEqual(response.code, 201)
        location = response.headers.getRawHeaders("location")[0]

        def paced() -> Iterator[bytes]:
            # 6 KiB bursts 300 ms apart: 20 KiB/s, far over min_rate, with
            # gaps longer than any burst.
            for i in range(0, len(data), 6 * 1024):
                time.sleep(0.3)
                yield data[i:i + 6 * 1024]

        head = edge.request_head("PATCH", location, {
            "Tus-Resumable": "1.0.0", "Authorization": f"Bearer {edge.key}", "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream", "Content-Length": str(len(data)),
            "Connection": "close"})
        seen = await edge.exchange(head, paced(), timeout=30)
        self.assertEqual(seen.status, 204, seen.answer)
        self.assertEqual(seen.header("upload-offset"), str(len(data)))
        upload_id = location.rsplit("/", 1)[1]
        (uploads,) = [s for s in edge.service if type(s).__name__ == "UploadService"]
        with uploads.spool.reader(upload_id) as r:
            self.assertEqual(hashlib.sha256(r.read(0, r.length)).digest(), hashlib.sha256(data).digest())
