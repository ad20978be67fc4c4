"""
The edge's transfer service as a state machine, with the test reactor, a real spool,
the fake link and the fake part target: what it says to the cloud, how it
applies the answers, and what it does to the spool file.
"""

from __future__ import annotations

import base64
import hashlib
import random
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relay.edge.events import EventHub
from relay.edge.tap import SCHEMAS
from relay.edge.transfer import journal
from relay.edge.transfer.service import TransferService, TransferSettings
from relay.edge.transfer.uploader import PartResponse
from relay.edge.uploads.handoff import IUploadSink, StagedUpload
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import Upload, UploadState, UploadStore
from relay.link.catalogue import Catalogue
from relay.link.envelope import TO_CLOUD, Envelope
from relay.testing import sync as fake_link
from relay.testing.db import SynchronousDatabase
from relay.testing.reactor import TestReactor, inline
from relay.testing.transfer import FakePartTarget
from relay.transfer_messages import register_types

KiB, MiB = 1 << 10, 1 << 20
SIZE = 3 * MiB + 5
DATA = random.Random(5).randbytes(SIZE)


class Edge:
    def __init__(self, root: Path, db: SynchronousDatabase | None = None, spool: Spool | None = None,
                 **settings: Any) -> None:
        self.root = root
        self.clock = TestReactor()
        self.clock.advance(1_764_000_000)
        self.db = db or SynchronousDatabase(root / "edge.db", [*SCHEMAS, fake_link.SCHEMA])
        self.spool = spool or Spool(root / "spool", b"m" * 32, segment_size=64 * KiB)
        self.store = UploadStore(self.db)  # type: ignore[arg-type]
        self.outbox = fake_link.FakeOutbox("edge:e1", self.clock)
        catalogue = Catalogue()
        register_types(catalogue)
        self.inbox = fake_link.FakeInbox(self.db, catalogue)  # type: ignore[arg-type]
        self.target = FakePartTarget()
        self.hub = EventHub()
        self.service = TransferService(
            self.clock, self.db, self.outbox,  # type: ignore[arg-type]
            TransferSettings(**{"min_part_size": MiB, "concurrency": 2, "request_timeout": 60,
                                "tail_copies": 1, **settings}),
            spool=self.spool, store=self.store, target=self.target, blocking=inline, events=self.hub,
        )
        self.service.register(self.inbox)

    def stage(self) -> StagedUpload:
        writer = self.spool.create("u" * 32)
        writer.write(DATA)
        writer.finalize()
        writer.close()
        self.store.add(Upload(id="u" * 32, owner="alice", project="p1", filename="a.bin", filetype="",
                              length=SIZE, offset=SIZE, state=UploadState.STAGED))
        return StagedUpload("u" * 32, "u" * 32, "alice", "p1", "a.bin", "", SIZE)

    def turn(self, seconds: float = 0) -> None:
        self.clock.advance(seconds)
        self.clock.advance(0)

    def sent(self) -> list[tuple[str, dict[str, Any]]]:
        taken = self.db.run_now(fake_link.FakeOutbox.take)
        assert all(queue == TO_CLOUD for queue, _ in taken)
        return [(m.type, m.body) for _, m in taken]

    def reply(self, type: str, body: dict[str, Any]) -> None:
        self.inbox.deliver(Envelope(type, "cloud", self.clock.seconds(), body))
        self.turn()

    def urls(self, transfer_id: str, numbers: list[int]) -> None:
        self.reply("transfer.urls", {"transfer_id": transfer_id, "expires_in": 3600, "urls": [
            {"number": n, "url": f"http://s3.test/b/k?partNumber={n}&X-Amz-Signature=x"} for n in numbers]})

    def answer_puts(self, status: int = 200) -> list[int]:
        """Answer every pending PUT as S3 would; returns their part numbers."""
        numbers = []
        while self.target.pending():
            for request in self.target.pending():
                if request.answer.called:
                    continue  # cancelled meanwhile (a second PUT of a part that arrived)
                number = int(request.url.split("partNumber=")[1].split("&")[0])
                numbers.append(number)
                md5 = base64.b64decode(request.headers["Content-MD5"])
                assert hashlib.md5(bytes(request.received.data)).digest() == md5
                code = "NoSuchUpload" if status == 404 else ""
                request.answer.callback(PartResponse(status, md5.hex() if status == 200 else "", code))
                self.turn()
        return numbers

    def job(self) -> journal.Job:
        found = self.db.run_now(journal.job, "u" * 32)
        assert found is not None
        return found


class TransferServiceTests(SynchronousTestCase):
    def edge(self, **settings: Any) -> Edge:
        root = Path(self.mktemp())
        root.mkdir()
        return Edge(root, **settings)

    def begin(self, edge: Edge) -> str:
        edge.service.startService()
        edge.service.upload_staged(edge.stage())
        edge.turn()
        sent = edge.sent()
        self.assertEqual([t for t, _ in sent], ["transfer.begin", "transfer.presign"])
        begin = sent[0][1]
        self.assertEqual((begin["size"], begin["part_size"], begin["part_count"]), (SIZE, MiB, 4))
        self.assertEqual(begin["sha256"], hashlib.sha256(DATA).hexdigest())
        self.assertEqual([p["number"] for p in sent[1][1]["parts"]], [1, 2, 3, 4])
        edge.reply("transfer.started", {"transfer_id": begin["transfer_id"], "object_key": "k"})
        return str(begin["transfer_id"])

    def test_sink(self) -> None:
        self.assertTrue(verifyObject(IUploadSink, self.edge().service))

    def test_transfer_kept_until_registered(self) -> None:
        edge = self.edge()
        tid = self.begin(edge)
        self.assertEqual(edge.store.get("u" * 32).result.state, UploadState.TRANSFERRING)  # type: ignore[attr-defined]
        edge.urls(tid, [1, 2, 3, 4])
        self.assertEqual(len(edge.target.pending()), 2, "two slots")
        self.assertEqual(sorted(edge.answer_puts()), [1, 2, 3, 4])
        self.assertEqual(edge.sent(), [("transfer.finish", {"transfer_id": tid})])
        self.assertEqual(edge.job().state, journal.JobState.FINISHING)
        self.assertEqual(edge.store.get("u" * 32).result.transferred, SIZE)  # type: ignore[attr-defined]
        # The cloud finds part 3 wrong: it goes again, then finish again.
        edge.reply("transfer.failed", {"transfer_id": tid, "code": "incomplete", "reason": "r", "missing": [3]})
        self.assertEqual(edge.answer_puts(), [3])
        self.assertEqual(edge.sent(), [("transfer.finish", {"transfer_id": tid})])
        # Nothing is erased before the registration, however long it takes.
        edge.turn(3600)
        self.assertTrue(edge.spool.exists("u" * 32))
        self.assertEqual([t for t, _ in edge.sent()][:1], ["transfer.finish"])  # asked again
        edge.reply("file.registered", {"transfer_id": tid, "file_id": "u" * 32, "project": "p1",
                                       "object_key": "k", "size": SIZE, "sha256": "0" * 64, "etag": "e"})
        self.assertFalse(edge.spool.exists("u" * 32))
        self.assertEqual(edge.job().state, journal.JobState.DONE)
        upload = edge.store.get("u" * 32).result  # type: ignore[attr-defined]
        self.assertEqual((upload.state, upload.transferred), (UploadState.IN_CLOUD, SIZE))
        self.assertEqual(edge.service.progress("u" * 32).confirmed, SIZE)  # type: ignore[union-attr]

    def test_no_such_upload_starts_over(self) -> None:
        edge = self.edge()
        tid = self.begin(edge)
        edge.urls(tid, [1, 2, 3, 4])
        request = edge.target.pending()[0]
        request.answer.callback(PartResponse(404, "", "NoSuchUpload"))
        edge.turn()
        sent = edge.sent()
        self.assertEqual([t for t, _ in sent], ["transfer.abort", "transfer.begin", "transfer.presign"])
        self.assertEqual(sent[0][1], {"transfer_id": tid})
        self.assertNotEqual(sent[1][1]["transfer_id"], tid)
        job = edge.job()
        self.assertEqual((job.restarts, job.confirmed_bytes, job.state), (1, 0, journal.JobState.BEGINNING))

    def test_refused_keeps_the_spool_file(self) -> None:
        edge = self.edge()
        tid = self.begin(edge)
        edge.reply("transfer.failed", {"transfer_id": tid, "code": "refused", "reason": "not a member"})
        self.assertTrue(edge.spool.exists("u" * 32))
        upload = edge.store.get("u" * 32).result  # type: ignore[attr-defined]
        self.assertEqual(upload.state, UploadState.FAILED)
        self.assertIn("not a member", upload.error)

    def test_a_registration_after_the_edge_gave_up_puts_the_file_in_the_cloud(self) -> None:
        edge = self.edge()
        tid = self.begin(edge)
        edge.reply("transfer.failed", {"transfer_id": tid, "code": "refused", "reason": "not a member"})
        self.assertEqual(edge.store.get("u" * 32).result.state, UploadState.FAILED)  # type: ignore[attr-defined]
        edge.reply("file.registered", {"transfer_id": tid, "file_id": "u" * 32, "project": "p1",
                                       "object_key": "k", "size": SIZE, "sha256": "0" * 64, "etag": "e"})
        self.assertFalse(edge.spool.exists("u" * 32))
        self.assertEqual(edge.job().state, journal.JobState.DONE)
        upload = edge.store.get("u" * 32).result  # type: ignore[attr-defined]
        self.assertEqual((upload.state, upload.error), (UploadState.IN_CLOUD, ""))

    def test_answers_for_an_old_transfer_are_ignored(self) -> None:
        edge = self.edge()
        self.begin(edge)
        edge.reply("file.registered", {"transfer_id": "f" * 32, "file_id": "u" * 32, "project": "p1",
                                       "object_key": "k", "size": SIZE, "sha256": "0" * 64, "etag": "e"})
        self.assertTrue(edge.spool.exists("u" * 32))
        self.assertEqual(edge.job().state, journal.JobState.SENDING)

    def test_resume_asks_s3_and_skips_what_it_holds(self) -> None:
        """
        After a restart the service asks which parts S3 holds and sends only
        the others; a part S3 holds with another digest is sent again.
        """
        edge = self.edge()
        tid = self.begin(edge)
        edge.urls(tid, [1, 2, 3, 4])
        edge.service.stopService()
        edge.turn()
        # A new process on the same database and spool.
        again = Edge(edge.root, edge.db, edge.spool)
        again.service.startService()
        again.turn()
        ((kind, body),) = again.sent()
        self.assertEqual(kind, "transfer.status")
        md5s = {p.number: base64.b64decode(p.md5).hex() for p in again.db.run_now(journal.parts, "u" * 32)}
        held = [{"number": 1, "size": MiB, "etag": md5s[1]}, {"number": 2, "size": MiB, "etag": "0" * 32},
                {"number": 4, "size": SIZE - 3 * MiB, "etag": md5s[4]}]
        again.reply("transfer.parts", {"transfer_id": tid, "request_id": body["request_id"], "page": 1,
                                       "last": True, "parts": held})
        self.assertEqual([t for t, _ in again.sent()], ["transfer.presign"])
        again.urls(tid, [2, 3])
        self.assertEqual(sorted(again.answer_puts()), [2, 3])
        self.assertEqual([t for t, _ in again.sent()], ["transfer.finish"])

    def test_tail_parts_are_raced(self) -> None:
        """
        When the last part is the only one left on the wire, idle slots PUT
        it again; the first answer counts, the other PUTs are cancelled
        (not retried), the part is confirmed once.
        """
        edge = self.edge(concurrency=4, tail_copies=3)
        tid = self.begin(edge)
        edge.urls(tid, [1, 2, 3, 4])
        first = {int(r.url.split("partNumber=")[1].split("&")[0]): r for r in edge.target.pending()}
        self.assertEqual(sorted(first), [1, 2, 3, 4])
        for number in (1, 2, 3):
            request = first[number]
            request.answer.callback(PartResponse(200, hashlib.md5(bytes(request.received.data)).hexdigest()))
            edge.turn()
        pending = edge.target.pending()
        self.assertEqual(len(pending), 3, "part 4 three times at most, on the idle slots")
        self.assertTrue(all("partNumber=4" in r.url for r in pending))
        third = pending[2]
        third.answer.callback(PartResponse(200, hashlib.md5(bytes(third.received.data)).hexdigest()))
        edge.turn()
        self.assertEqual(edge.target.pending(), [], "the slower PUTs were cancelled")
        self.assertEqual(edge.service.hedges, 3)  # part 3 once, then part 4 twice
        self.assertEqual(edge.sent(), [("transfer.finish", {"transfer_id": tid})])
        self.assertEqual(edge.job().confirmed_bytes, SIZE)
        edge.turn(100)
        self.assertEqual(len(edge.target.requests), 7)

    def test_unreadable_spool_file_fails_the_upload(self) -> None:
        edge = self.edge()
        edge.service.startService()
        staged = edge.stage()
        edge.spool.erase(staged.spool_id)
        edge.service.upload_staged(staged)
        edge.turn()
        self.assertEqual(edge.sent(), [])
        self.assertEqual(edge.job().state, journal.JobState.FAILED)
        upload = edge.store.get("u" * 32).result  # type: ignore[attr-defined]
        self.assertEqual(upload.state, UploadState.FAILED)
        self.assertIn("cannot be read", upload.error)

    def test_part_refused_for_good(self) -> None:
        edge = self.edge()
        tid = self.begin(edge)
        edge.urls(tid, [1, 2, 3, 4])
        for _ in range(20):
            for request in edge.target.pending():
                if not request.answer.called:
                    request.answer.callback(PartResponse(400, "", "BadDigest"))
            edge.turn(40)
        self.assertEqual(edge.job().state, journal.JobState.FAILED)
        self.assertEqual(edge.target.pending(), [], "the other parts stopped")
        self.assertTrue(edge.spool.exists("u" * 32), "kept whatever fails")
        self.assertEqual(edge.store.get("u" * 32).result.state, UploadState.FAILED)  # type: ignore[attr-defined]
