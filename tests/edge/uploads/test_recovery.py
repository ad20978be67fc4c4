"""
What the receiver does when it starts again: catch offsets up with the
spool, finish uploads completed but not recorded, hand staged uploads on
again, erase spool files nobody owns and drop unfinished concatenations;
and, when it stops, flush a body in flight.
"""

from __future__ import annotations

from pathlib import Path

from relay.edge.uploads.store import UploadState

from .harness import Edge, random_bytes
from .test_http import EdgeTestCase
from .test_streaming import connect, lease_offset, patch_head, until


class RecoveryTests(EdgeTestCase):
    async def restart(self, edge: Edge) -> Edge:
        await edge.stop()
        again = Edge(edge.directory, self.config)
        await again.start()
        self.addCleanup(again.stop)
        return again

    async def first(self) -> Edge:
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        return await Edge(directory, self.config).start()

    async def test_offsets_catch_up_with_the_spool(self) -> None:
        edge = await self.first()
        url = await edge.create(100)
        await edge.patch(url, 0, b"a" * 10)
        upload_id = url.rsplit("/", 1)[1]
        # Bytes made durable in the spool, then a crash before the record.
        writer = edge.spool.open_writer(upload_id)
        writer.write(b"b" * 15)
        writer.flush(True)
        writer.close()
        edge = await self.restart(edge)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "25")
        r = await edge.patch(url, 25, b"c" * 75)
        self.assertEqual(r.code, 204)
        self.assertEqual(edge.stored(url), b"a" * 10 + b"b" * 15 + b"c" * 75)

    async def test_completed_but_unrecorded_upload_is_staged(self) -> None:
        edge = await self.first()
        url = await edge.create(20)
        upload_id = url.rsplit("/", 1)[1]
        writer = edge.spool.open_writer(upload_id)
        writer.write(b"z" * 20)
        writer.finalize()
        writer.close()
        edge = await self.restart(edge)
        upload = await edge.store.get(upload_id)
        self.assertEqual((upload.state, upload.offset), (UploadState.STAGED, 20))
        self.assertIn(upload_id, edge.sink.staged)

    async def test_all_bytes_in_but_not_finalized(self) -> None:
        edge = await self.first()
        url = await edge.create(20)
        upload_id = url.rsplit("/", 1)[1]
        with edge.spool.open_writer(upload_id) as writer:
            writer.write(b"q" * 20)
            writer.flush(True)
        await edge.store.record_offset(upload_id, 20, 0.0, None)
        # Without a restart, an empty PATCH at the end finishes it.
        r = await edge.patch(url, 20, b"")
        self.assertEqual((r.code, r.header("Upload-Offset")), (204, "20"))
        self.assertIn(upload_id, edge.sink.staged)
        # After a restart, recovery finishes it by itself.
        url2 = await edge.create(5)
        second = url2.rsplit("/", 1)[1]
        with edge.spool.open_writer(second) as writer:
            writer.write(b"w" * 5)
            writer.flush(True)
        edge = await self.restart(edge)
        upload = await edge.store.get(second)
        self.assertEqual((upload.state, upload.offset), (UploadState.STAGED, 5))
        self.assertEqual(edge.stored(url2), b"w" * 5)

    async def test_staged_uploads_are_handed_on_again(self) -> None:
        edge = await self.first()
        url = await edge.create(3)
        await edge.patch(url, 0, b"abc")
        edge = await self.restart(edge)
        self.assertEqual(list(edge.sink.staged), [url.rsplit("/", 1)[1]])

    async def test_orphans_and_unfinished_concatenations_are_erased(self) -> None:
        edge = await self.first()
        part = await edge.create(3, Upload_Concat="partial")
        await edge.patch(part, 0, b"abc")
        part_id = part.rsplit("/", 1)[1]
        orphan = "0" * 32
        edge.spool.create(orphan).close()
        edge.spool.create(part_id + "-x00000000").close()
        edge.spool.create("not-ours").close()
        # A final upload whose concatenation was cut short by a crash.
        final = (await edge.store.get(part_id)).replace(
            id="f" * 32, concat="final", parts=(part_id,), length=3, offset=0)
        await edge.store.add(final)
        edge.spool.create(final.id).close()
        edge = await self.restart(edge)
        self.assertEqual(sorted(edge.spool.list_ids()), sorted([part_id, "not-ours"]))
        self.assertIsNone(await edge.store.get(final.id))
        self.assertEqual((await edge.head(part)).header("Upload-Offset"), "3")

    async def test_stopping_flushes_a_body_in_flight(self) -> None:
        edge = await self.first()
        data = random_bytes(500_000)
        url = await edge.create(len(data))
        client = await connect(edge)
        client.transport.write(patch_head(url, 0, len(data)) + data[:300_000])
        until(edge, lambda: lease_offset(edge, url) == 300_000)
        await edge.fired(edge.root.stopService())  # with the body in flight
        self.assertTrue(client.closed.called)
        await edge.stop()
        again = Edge(edge.directory, self.config)
        await again.start()
        self.addCleanup(again.stop)
        self.assertEqual((await again.head(url)).header("Upload-Offset"), "300000")
        self.assertEqual(again.stored(url), data[:300_000])
