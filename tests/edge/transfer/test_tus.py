"""
The tus path (C{transfer.mode = "tus"}) end to end: real C{relay-edge} and
C{relay-cloud} processes, RabbitMQ, moto or C{rclone serve s3}, and the
link emulator between the edge and the cloud's receiver with an aggregate
cap, resets and stalls.  Files arrive byte-identical while the cloud and
the edge are each killed with SIGKILL and restarted; no part S3 held is
written again, and after an edge restart the bytes crossing the link are
only those the receiver did not have.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from relay.testing.linkemu import LinkProfile
from relay.testing.s3servers import start_moto, start_rclone
from relay.testing.transfer_world import MiB, spool_has

from .test_faults import Base
from .world import sleep

_UPLOAD_PART = re.compile(rb"PUT [^ ]*partNumber=(\d+)[^ ]* HTTP/1.1\" 200")


class MotoTusTests(Base):
    timeout = 300

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="relay-moto-")
        cls.server = start_moto(log_path=Path(cls.tmp.name) / "moto.log")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls.tmp.cleanup()

    async def test_cloud_and_edge_killed_under_resets_and_stalls(self) -> None:
        """
        A 64 MiB and a 50 MiB file through a 4 MiB/s link that resets each
        connection every 6 s on average and stalls it every 20 s; the
        cloud, then the edge, is killed mid-transfer and restarted.  Both
        files arrive byte-identical; every S3 part was written once.
        """
        world = self.world(
            receiver=True,
            s3_link=LinkProfile(latency_ms=50, aggregate_bytes_per_s=4 * MiB, rate_bytes_per_s=1 * MiB,
                                reset_mean_s=6, stall_mean_s=20, stall_duration_s=3),
            amqp_link=LinkProfile(latency_ms=50),
            transfer={"stream_stall_timeout": 2.0, "min_streams": 2, "max_streams": 12},
        )
        await world.start()
        uploads = dict([world.stage(64 * MiB, seed=11), world.stage(50 * MiB + 777, seed=12)])
        log_mark = len(self.server.log_path.read_bytes()) if self.server.log_path else 0
        world.edge.start()

        def confirmed() -> int:
            jobs = [world.job(u) for u in uploads]
            return sum(len(j.confirmed_parts) for j in jobs if j is not None)

        await world.wait_for("some parts confirmed", lambda: confirmed() >= 3, 90)
        await deferToThread(world.cloud.kill)
        await sleep(2)
        world.cloud.start()
        reached = confirmed()
        await world.wait_for("more parts confirmed", lambda: confirmed() >= reached + 4, 90)
        await deferToThread(world.edge.kill)
        for upload_id in uploads:
            self.assertTrue(spool_has(world.edge_dir, upload_id))
        world.edge.start()
        await world.wait_done(list(uploads), 200)
        await self.check_arrived(world, uploads)
        self.assertGreater(world.s3_link.counters.resets_injected, 0)
        # Each part went to S3 exactly once: nothing S3 held was sent again.
        assert self.server.log_path is not None
        written = [int(n) for n in _UPLOAD_PART.findall(self.server.log_path.read_bytes()[log_mark:])]
        parts = sum(-(-size // (5 * MiB)) for size in (64 * MiB, 50 * MiB + 777))
        self.assertEqual(len(written), parts, "every part written once")
        self.assertEqual(world.edge_metrics()["relay_transfer_stream_resent_confirmed"], 0)

    async def test_every_range_in_flight_at_once_on_a_shared_link(self) -> None:
        """
        50 MiB (10 ranges of a 5 MiB part) through a 4 MiB/s link of
        256 KiB/s per connection that resets each connection every 10 s:
        the streams start wide (C{start_streams}), so every range is in
        flight within moments of the first connection (a ramp doubling
        from 4 every 2 s would take 4 s), the file arrives byte-identical
        and no more than its bytes (and headers) cross the link.
        """
        world = self.world(
            receiver=True,
            s3_link=LinkProfile(latency_ms=50, aggregate_bytes_per_s=4 * MiB, rate_bytes_per_s=256 * 1024,
                                reset_mean_s=10),
            amqp_link=LinkProfile(latency_ms=50),
        )
        await world.start()
        size = 50 * MiB
        upload_id, sha256 = world.stage(size, seed=14)
        world.edge.start()
        await world.wait_for("the first connection to the receiver",
                             lambda: world.s3_link.counters.connections_accepted > 0, 60)
        first = reactor.seconds()
        await world.wait_for("every range in flight", lambda: len(world.s3_link.connections) >= 10, 30)
        self.assertLess(reactor.seconds() - first, 3.0)
        await world.wait_done([upload_id], 120)
        await self.check_arrived(world, {upload_id: sha256})
        self.assertGreater(world.s3_link.counters.resets_injected, 0)
        self.assertLess(world.s3_link.counters.bytes_to_upstream, size * 1.02)
        self.assertEqual(world.edge_metrics()["relay_transfer_stream_resent_confirmed"], 0)

    async def test_edge_kill_9_sends_only_what_the_receiver_lacks(self) -> None:
        """
        After a SIGKILL of the edge, the restarted edge asks the receiver
        where each partial upload stands: what then crosses the link is
        the rest of the file (and headers), nothing the cloud had.  A token
        the cloud did not issue for this transfer is refused with 401.
        """
        world = self.world(
            receiver=True,
            s3_link=LinkProfile(latency_ms=30, aggregate_bytes_per_s=4 * MiB),
            transfer={"min_streams": 4, "max_streams": 4},
        )
        await world.start()
        size = 60 * MiB
        upload_id, sha256 = world.stage(size, seed=13)
        world.edge.start()
        await world.wait_for("a few parts confirmed",
                             lambda: len(getattr(world.job(upload_id), "confirmed_parts", ())) >= 3, 60)
        await deferToThread(world.edge.kill)
        await world.wait_for("the dead edge's connections gone", lambda: not world.s3_link.connections, 30)
        job = world.job(upload_id)
        assert job is not None
        self.assertLess(len(job.confirmed_parts), job.part_count, "killed mid-transfer")
        upstream = world.s3_link.counters.bytes_to_upstream
        before = world.s3_link.counters.bytes_to_upstream
        world.edge.start()
        await world.wait_done([upload_id], 90)
        after = world.s3_link.counters.bytes_to_upstream - before
        # The receiver kept every byte that reached it (the cloud did not
        # restart): the rest of the file crosses, plus requests' headers.
        self.assertLessEqual(after, size - min(upstream, size) + 256 * 1024 + size // 100)
        self.assertGreater(after, 0)
        await self.check_arrived(world, {upload_id: sha256})
        response = await treq.request(
            "HEAD", f"http://127.0.0.1:{world.s3_link.port}/transfers/{job.transfer_id}/1",
            headers={"Tus-Resumable": ["1.0.0"], "Authorization": ["Bearer " + "x" * 43]}, persistent=False)
        self.assertEqual(response.code, 401)


class RcloneTusTests(Base):
    timeout = 300

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="relay-rclone-")
        cls.server = start_rclone(Path(cls.tmp.name))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls.tmp.cleanup()

    async def test_through_rclone_with_resets(self) -> None:
        """rclone checks signatures and Content-MD5: 50 MiB arrive byte-identical."""
        world = self.world(
            receiver=True,
            s3_link=LinkProfile(latency_ms=50, aggregate_bytes_per_s=6 * MiB, rate_bytes_per_s=1 * MiB,
                                reset_mean_s=5),
            transfer={"stream_stall_timeout": 3.0},
        )
        await world.start()
        uploads = dict([world.stage(50 * MiB + 3, seed=14)])
        world.edge.start()
        await world.wait_done(list(uploads), 150)
        await self.check_arrived(world, uploads)


class NoReceiverTests(Base):
    timeout = 120

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = start_moto()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    async def test_a_cloud_without_receiver_gets_the_parts_directly(self) -> None:
        """An edge in mode "tus" whose cloud runs no receiver sends presigned part PUTs instead."""
        world = self.world(s3_link=LinkProfile(latency_ms=20), transfer={"mode": "tus"})
        await world.start()
        uploads = dict([world.stage(12 * MiB + 5, seed=15)])
        world.edge.start()
        await world.wait_done(list(uploads), 60)
        await self.check_arrived(world, uploads)
        self.assertIn("the cloud runs no tus receiver", world.edge.log_text())
