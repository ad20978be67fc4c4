"""
A transfer does not starve the edge's other traffic: while 8 part PUTs fill
the one bottleneck they share with the AMQP link (one emulated international
link, 4 MiB/s for everything), a command still makes its round trip to the
cloud and back about as fast as on an idle link, and the edge's own pages
answer at once.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from twisted.trial import unittest

from relay.testing.linkemu import LinkProfile
from relay.testing.s3servers import S3Server, start_moto
from relay.testing.transfer_world import MiB

from .world import TransferWorld, sleep

LINK = LinkProfile(latency_ms=75, aggregate_bytes_per_s=4 * MiB)


class InteractiveTrafficTests(unittest.TestCase):
    timeout = 200
    server: ClassVar[S3Server]
    tmp: ClassVar[tempfile.TemporaryDirectory[str]]

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="relay-moto-")
        cls.server = start_moto(log_path=Path(cls.tmp.name) / "moto.log")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls.tmp.cleanup()

    async def round_trip(self, world: TransferWorld, name: str) -> float:
        """
        Seconds from creating a project at the edge until the cloud's answer
        has settled it there (edge -> broker -> cloud -> broker -> edge).
        """
        started = time.monotonic()
        code, body = await world.api("POST", "/api/projects", {"name": name})
        self.assertEqual(code, 202, body)
        project_id = body["project"]["id"]

        async def settled() -> bool:
            _, answer = await world.api("GET", f"/api/projects/{project_id}")
            return answer["project"]["pending"] is None

        while not await settled():
            self.assertLess(time.monotonic() - started, 60, f"{name} never settled")
            await sleep(0.05)
        return time.monotonic() - started

    async def test_commands_get_through_while_a_transfer_fills_the_link(self) -> None:
        await self.check(transfer={"concurrency": 8, "stall_timeout": 30.0})

    async def test_commands_get_through_while_tus_streams_fill_the_link(self) -> None:
        """The same with the tus path, its stream count free to grow to 16."""
        await self.check(receiver=True, transfer={"max_streams": 16, "stream_stall_timeout": 30.0})

    async def check(self, **options: Any) -> None:
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        world = TransferWorld(root, self.server, s3_link=LINK, amqp_link=LINK, one_bottleneck=True, **options)
        self.addCleanup(world.stop)
        await world.start()
        upload_id, _ = world.stage(64 * MiB, seed=11)
        world.edge.start()
        await world.wait_for("the link full of parts", lambda: getattr(world.job(upload_id), "state", "") ==
                             "sending" and world.s3_link.counters.bytes_to_upstream > 4 * MiB, 60)

        busy = [await self.round_trip(world, f"busy {n}") for n in range(3)]
        started = time.monotonic()
        code, _ = await world.api("GET", "/api/uploads")
        page = time.monotonic() - started
        self.assertEqual(code, 200)
        # Still sending: the measurements above were taken under load.
        self.assertNotEqual(world.upload(upload_id)[0], "in_cloud")

        await world.wait_done([upload_id], 120)
        idle = [await self.round_trip(world, f"idle {n}") for n in range(3)]
        # Four crossings of the 75 ms link, plus queueing behind the parts'
        # slices: the round trip may grow, but not to seconds.
        self.assertLess(max(busy), max(idle) + 1.0, (busy, idle))
        self.assertLess(page, 0.5)
