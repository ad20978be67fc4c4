"""
The cloud's transfer requests, with the in-memory object store, the fake
link and the test reactor: every answer, the checks before completing, retries of
failed S3 calls, and recovery from a crash between S3 and the database.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relay.cloud import transfers
from relay.cloud.objects import ObjectStoreError, object_key
from relay.cloud.transfers import CloudTransfers, IFileRegistry
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope, to_edge
from relay.testing import sync as fake_link
from relay.testing.db import SynchronousDatabase
from relay.testing.reactor import TestReactor, reactor_for
from relay.testing.transfer import FakeFileRegistry, FakeObjectStore
from relay.transfer_messages import register_types

MiB = 1 << 20
PART = 5 * MiB
CHUNKS = [bytes([n]) * PART for n in range(1, 3)] + [b"tail"]
WHOLE = b"".join(CHUNKS)
TID = "a" * 32


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


class Cloud:
    def __init__(self, path: Path, clock: TestReactor, readback: bool = False) -> None:
        self.clock = clock
        self.clock.advance(1_764_000_000)
        self.db = SynchronousDatabase(path, [transfers.SCHEMA, fake_link.SCHEMA])
        self.outbox = fake_link.FakeOutbox("cloud", self.clock)
        catalogue = Catalogue()
        register_types(catalogue)
        self.inbox = fake_link.FakeInbox(self.db, catalogue)  # type: ignore[arg-type]
        self.objects = FakeObjectStore()
        self.files = FakeFileRegistry()
        self.service = CloudTransfers(self.clock, self.db, self.outbox, self.objects, self.files,  # type: ignore[arg-type]
                                      presign_expiry=600, readback=readback)
        self.service.register(self.inbox)
        self.service.startService()

    def send(self, type: str, body: dict[str, Any], edge: str = "e1") -> None:
        self.inbox.deliver(Envelope(type, f"edge:{edge}", self.clock.seconds(), body))
        self.clock.advance(0)

    def replies(self, edge: str = "e1") -> list[tuple[str, dict[str, Any]]]:
        taken = self.db.run_now(fake_link.FakeOutbox.take)
        for queue, _ in taken:
            assert queue == to_edge(edge), queue
        return [(m.type, m.body) for _, m in taken]

    def begin(self, **changes: Any) -> None:
        body = {
            "transfer_id": TID, "file_id": "f1", "project": "p1", "owner": "u1", "name": "a.bin",
            "content_type": "application/octet-stream", "size": len(WHOLE),
            "sha256": hashlib.sha256(WHOLE).hexdigest(), "part_size": PART, "part_count": 3,
        }
        body.update(changes)
        self.send("transfer.begin", body)

    def presign(self, numbers: list[int]) -> dict[int, str]:
        self.send("transfer.presign", {"transfer_id": TID,
                                       "parts": [{"number": n, "md5": md5(CHUNKS[n - 1])} for n in numbers]})
        (kind, body), = self.replies()
        assert kind == "transfer.urls", body
        return {u["number"]: u["url"] for u in body["urls"]}

    def upload_id(self) -> str:
        (upload_id,) = self.objects.uploads
        return upload_id

    def put_all(self) -> None:
        for n, chunk in enumerate(CHUNKS, start=1):
            self.objects.put_part(self.upload_id(), n, chunk)

    def state(self) -> str:
        return str(self.db.conn.execute("SELECT state FROM transfers WHERE id = ?", (TID,)).fetchone()[0])


class CloudTransferTests(SynchronousTestCase):
    def cloud(self, **kwargs: Any) -> Cloud:
        cloud = Cloud(Path(self.mktemp()), reactor_for(self), **kwargs)
        self.addCleanup(cloud.service.stopService)
        return cloud

    def test_registries(self) -> None:
        self.assertTrue(verifyObject(IFileRegistry, FakeFileRegistry()))
        self.assertTrue(verifyObject(IFileRegistry, transfers.RegistryFiles(object())))

    def test_a_whole_transfer(self) -> None:
        cloud = self.cloud()
        cloud.begin()
        self.assertEqual(cloud.replies(), [("transfer.started", {"transfer_id": TID,
                                                                 "object_key": object_key("p1", "f1")})])
        upload = cloud.objects.uploads[cloud.upload_id()]
        self.assertEqual(upload.key, "projects/p1/files/f1")
        self.assertEqual(upload.metadata["sha256"], hashlib.sha256(WHOLE).hexdigest())
        self.assertEqual(sorted(cloud.presign([1, 2, 3])), [1, 2, 3])
        cloud.put_all()
        cloud.send("transfer.finish", {"transfer_id": TID})
        ((kind, body),) = cloud.replies()
        self.assertEqual(kind, "file.registered")
        self.assertEqual((body["file_id"], body["size"]), ("f1", len(WHOLE)))
        self.assertTrue(body["etag"].endswith("-3"))
        self.assertEqual(cloud.objects.objects["projects/p1/files/f1"][0], WHOLE)
        self.assertEqual([t.file_id for t in cloud.files.registered], ["f1"])
        self.assertEqual(cloud.state(), "registered")
        # A repeated finish (the edge did not hear back) answers the same.
        cloud.send("transfer.finish", {"transfer_id": TID})
        self.assertEqual([k for k, _ in cloud.replies()], ["file.registered"])
        self.assertEqual(len(cloud.files.registered), 1)

    def test_repeated_begin_is_the_same_upload(self) -> None:
        cloud = self.cloud()
        cloud.begin()
        cloud.begin()
        self.assertEqual([k for k, _ in cloud.replies()], ["transfer.started"] * 2)
        self.assertEqual(len(cloud.objects.uploads), 1)

    def test_inconsistent_plan_is_refused(self) -> None:
        cloud = self.cloud()
        cloud.begin(part_count=2)
        ((kind, body),) = cloud.replies()
        self.assertEqual((kind, body["code"]), ("transfer.failed", "invalid"))
        self.assertEqual(cloud.objects.uploads, {})

    def test_begin_goes_first(self) -> None:
        """
        A presign recorded before its begin (they were queued together)
        waits for it instead of failing.
        """
        cloud = self.cloud()
        cloud.service.stopService()
        cloud.send("transfer.presign", {"transfer_id": TID, "parts": [{"number": 1, "md5": md5(CHUNKS[0])}]})
        cloud.begin()
        cloud.service.startService()
        cloud.clock.advance(0)
        self.assertEqual([k for k, _ in cloud.replies()], ["transfer.started", "transfer.urls"])

    def test_missing_and_wrong_parts(self) -> None:
        """
        finish with a part missing and one that is not what was presigned:
        incomplete, naming both; nothing is completed.
        """
        cloud = self.cloud()
        cloud.begin()
        cloud.replies()
        cloud.presign([1, 2, 3])
        cloud.objects.put_part(cloud.upload_id(), 1, CHUNKS[0])
        cloud.objects.put_part(cloud.upload_id(), 3, b"TAIL")
        cloud.send("transfer.finish", {"transfer_id": TID})
        ((kind, body),) = cloud.replies()
        self.assertEqual((kind, body["code"], body["missing"]), ("transfer.failed", "incomplete", [2, 3]))
        self.assertEqual(cloud.state(), "open")
        self.assertNotIn("complete_upload", cloud.objects.calls)

    def test_status_pages(self) -> None:
        cloud = self.cloud()
        cloud.begin()
        cloud.replies()
        cloud.objects.put_part(cloud.upload_id(), 2, CHUNKS[1])
        cloud.send("transfer.status", {"transfer_id": TID, "request_id": "b" * 32})
        ((kind, body),) = cloud.replies()
        self.assertEqual(kind, "transfer.parts")
        self.assertEqual((body["page"], body["last"]), (1, True))
        self.assertEqual(body["parts"], [{"number": 2, "size": PART, "etag": hashlib.md5(CHUNKS[1]).hexdigest()}])

    def test_lost_upload(self) -> None:
        cloud = self.cloud()
        cloud.begin()
        cloud.replies()
        cloud.objects.uploads.clear()  # the lifecycle rule aborted it
        cloud.send("transfer.status", {"transfer_id": TID, "request_id": "b" * 32})
        ((kind, body),) = cloud.replies()
        self.assertEqual((kind, body["code"]), ("transfer.failed", "no_such_upload"))
        self.assertEqual(cloud.state(), "aborted")

    def test_transient_failures_are_retried_with_backoff(self) -> None:
        cloud = self.cloud()
        for _ in range(3):
            cloud.objects.fail_next(ObjectStoreError("503 SlowDown", transient=True))
        cloud.begin()
        self.assertEqual(cloud.replies(), [])
        self.assertEqual(cloud.objects.calls, ["create_upload"])
        cloud.clock.advance(0.49)
        self.assertEqual(len(cloud.objects.calls), 1)  # 0.5-1 s after the first failure
        cloud.clock.advance(0.51)
        self.assertEqual(len(cloud.objects.calls), 2)
        cloud.clock.advance(0.99)
        self.assertEqual(len(cloud.objects.calls), 2)  # 1-2 s after the second
        cloud.clock.advance(1.01)
        self.assertEqual(len(cloud.objects.calls), 3)
        cloud.clock.advance(1.99)
        self.assertEqual(len(cloud.objects.calls), 3)  # 2-4 s after the third
        cloud.clock.advance(2.01)
        self.assertEqual([k for k, _ in cloud.replies()], ["transfer.started"])
        self.assertEqual(len(cloud.objects.uploads), 1)

    def test_crash_between_complete_and_commit(self) -> None:
        """
        S3 completed the upload but the cloud died before recording it: the
        repeated finish finds the object (this transfer's, by its metadata)
        and registers it.
        """
        cloud = self.cloud()
        cloud.begin()
        cloud.replies()
        cloud.presign([1, 2, 3])
        cloud.put_all()
        cloud.objects.complete_upload("projects/p1/files/f1", cloud.upload_id(),
                                      [(n, "") for n in (1, 2, 3)])
        cloud.send("transfer.finish", {"transfer_id": TID})
        self.assertEqual([k for k, _ in cloud.replies()], ["file.registered"])

    def test_another_edge_cannot_touch_a_transfer(self) -> None:
        cloud = self.cloud()
        cloud.begin()
        cloud.replies()
        cloud.send("transfer.finish", {"transfer_id": TID}, edge="e2")
        ((kind, body),) = cloud.replies("e2")
        self.assertEqual((kind, body["code"]), ("transfer.failed", "invalid"))
        cloud.send("transfer.abort", {"transfer_id": TID}, edge="e2")
        cloud.replies("e2")
        self.assertEqual(cloud.state(), "open")
        self.assertEqual(len(cloud.objects.uploads), 1)

    def test_refused_registration(self) -> None:
        cloud = self.cloud()
        cloud.files.refuse = "no longer a member"
        cloud.begin()
        cloud.replies()
        cloud.presign([1, 2, 3])
        cloud.put_all()
        cloud.send("transfer.finish", {"transfer_id": TID})
        ((kind, body),) = cloud.replies()
        self.assertEqual((kind, body["code"]), ("transfer.failed", "refused"))
        self.assertEqual(cloud.state(), "failed")

    def test_readback_catches_a_false_sha256(self) -> None:
        cloud = self.cloud(readback=True)
        cloud.begin(sha256="0" * 64)
        cloud.replies()
        cloud.presign([1, 2, 3])
        cloud.put_all()
        cloud.send("transfer.finish", {"transfer_id": TID})
        ((kind, body),) = cloud.replies()
        self.assertEqual((kind, body["code"]), ("transfer.failed", "mismatch"))

    def test_abort(self) -> None:
        cloud = self.cloud()
        cloud.begin()
        cloud.replies()
        cloud.send("transfer.abort", {"transfer_id": TID})
        self.assertEqual([k for k, _ in cloud.replies()], ["transfer.aborted"])
        self.assertEqual(cloud.objects.uploads, {})
        self.assertEqual(cloud.state(), "aborted")
        cloud.begin()
        ((kind, body),) = cloud.replies()
        self.assertEqual((kind, body["code"]), ("transfer.failed", "no_such_upload"))


class NoReceiverTests(SynchronousTestCase):
    def test_authorize_without_a_receiver(self) -> None:
        cloud = Cloud(Path(self.mktemp()), reactor_for(self))
        self.addCleanup(cloud.service.stopService)
        cloud.begin()
        cloud.replies()
        cloud.send("transfer.authorize", {"transfer_id": TID})
        ((kind, body),) = cloud.replies()
        self.assertEqual((kind, body["code"]), ("transfer.failed", "no_receiver"))
        self.assertEqual(cloud.state(), "open")
