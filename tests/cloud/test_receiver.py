"""
The cloud's tus receiver over HTTP (treq's StubTreq against its resource),
with the in-memory object store and the test reactor: tokens, partial
uploads written to S3 part by part as bytes arrive, the final
concatenation that completes and registers the file, offsets after a
restart, and every refusal leaving nothing stored.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from relay.cloud import transfers
from relay.cloud.receiver.resource import ReceiverResource
from relay.cloud.receiver.service import ReceiverSettings, TransferReceiver
from relay.cloud.receiver.tokens import TokenIssuer
from relay.cloud.transfers import CloudTransfers
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope
from relay.testing import sync as fake_link
from relay.testing.db import SynchronousDatabase
from relay.testing.reactor import reactor_for
from relay.testing.transfer import FakeFileRegistry, FakeObjectStore
from relay.transfer_messages import register_types
from relay.tus.protocol import encode_checksum, encode_metadata

MiB = 1 << 20
PART = 5 * MiB
CHUNKS = [bytes([n]) * PART for n in range(1, 4)] + [b"tail" * 100]
WHOLE = b"".join(CHUNKS)
TID = "a" * 32
OTHER = "b" * 32
BASE = "http://receiver.test/transfers"


def md5(data: bytes) -> bytes:
    return hashlib.md5(data).digest()


class Receiver(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = reactor_for(self)
        self.clock.advance(1_764_000_000)
        path = Path(self.mktemp())
        self.db = SynchronousDatabase(path, [transfers.SCHEMA, fake_link.SCHEMA])
        self.outbox = fake_link.FakeOutbox("cloud", self.clock)
        catalogue = Catalogue()
        register_types(catalogue)
        self.inbox = fake_link.FakeInbox(self.db, catalogue)  # type: ignore[arg-type]
        self.objects = FakeObjectStore()
        self.files = FakeFileRegistry()
        self.transfers = CloudTransfers(self.clock, self.db, self.outbox, self.objects,  # type: ignore[arg-type]
                                        self.files, tokens=TokenIssuer(BASE + "/", 900))
        self.transfers.register(self.inbox)
        self.transfers.startService()
        self.addCleanup(self.transfers.stopService)
        self.restart()

    def restart(self, max_streams: int = 8) -> None:
        """A new receiver on the same database and bucket (the cloud restarted)."""
        self.receiver = TransferReceiver(self.clock, self.db, self.objects,  # type: ignore[arg-type]
                                         self.transfers.finish_later, ReceiverSettings(max_streams=max_streams))
        self.client = StubTreq(ReceiverResource(self.receiver, 1 << 40))

    # -- helpers -------------------------------------------------------------

    def send(self, type: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        self.inbox.deliver(Envelope(type, "edge:e1", self.clock.seconds(), body))
        self.clock.advance(0)
        return [(m.type, m.body) for _, m in self.db.run_now(fake_link.FakeOutbox.take)]

    def begin(self, tid: str = TID) -> str:
        self.send("transfer.begin", {
            "transfer_id": tid, "file_id": "f" + tid[:4], "project": "p1", "owner": "u1", "name": "a.bin",
            "content_type": "application/octet-stream", "size": len(WHOLE),
            "sha256": hashlib.sha256(WHOLE).hexdigest(), "part_size": PART, "part_count": len(CHUNKS),
        })
        return self.authorize(tid)

    def authorize(self, tid: str = TID) -> str:
        ((kind, body),) = self.send("transfer.authorize", {"transfer_id": tid})
        self.assertEqual(kind, "transfer.authorized")
        self.assertEqual(body["url"], f"{BASE}/{tid}/")
        return str(body["token"])

    def request(self, method: str, path: str, token: str | None, data: bytes = b"",
                **headers: str) -> tuple[int, dict[str, str], bytes]:
        sent = {"Tus-Resumable": "1.0.0", **{k.replace("_", "-"): v for k, v in headers.items()}}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        d = self.client.request(method, f"{BASE}{path}", headers=sent, data=data or None)
        self.client.flush()
        response = self.successResultOf(d)
        body = self.successResultOf(response.content())
        got = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
        return response.code, got, body

    def create(self, token: str, first: int, last: int, tid: str = TID, md5s: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        length = sum(len(c) for c in CHUNKS[first - 1:last])
        digests = md5s if md5s is not None else b"".join(md5(c) for c in CHUNKS[first - 1:last])
        metadata = encode_metadata({"first": str(first), "last": str(last), "md5s": digests})
        return self.request("POST", f"/{tid}/", token, Upload_Length=str(length), Upload_Concat="partial",
                            Upload_Metadata=metadata)

    def patch(self, token: str, first: int, offset: int, data: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("PATCH", f"/{TID}/{first}", token, data, Upload_Offset=str(offset),
                            Content_Type="application/offset+octet-stream", **headers)

    def stored_parts(self) -> dict[int, bytes]:
        (upload,) = self.objects.uploads.values()
        return upload.parts

    # -- tests ---------------------------------------------------------------

    def test_a_whole_transfer_over_two_streams(self) -> None:
        token = self.begin()
        code, headers, _ = self.create(token, 1, 2)
        self.assertEqual((code, headers["location"]), (201, f"/transfers/{TID}/1"))
        self.assertEqual(self.create(token, 3, 4)[0], 201)
        first = CHUNKS[0] + CHUNKS[1]
        # Bytes arrive in pieces; a part goes to S3 as soon as it is whole.
        code, headers, _ = self.patch(token, 1, 0, first[:3 * MiB])
        self.assertEqual((code, headers["upload-offset"]), (204, str(3 * MiB)))
        self.assertEqual(self.stored_parts(), {})
        self.assertEqual(self.patch(token, 1, 3 * MiB, first[3 * MiB:7 * MiB])[1]["upload-offset"], str(7 * MiB))
        self.assertEqual(sorted(self.stored_parts()), [1])
        second = CHUNKS[2] + CHUNKS[3]
        self.assertEqual(self.patch(token, 3, 0, second)[0], 204)
        self.assertEqual(self.patch(token, 1, 7 * MiB, first[7 * MiB:])[0], 204)
        code, headers, _ = self.request("HEAD", f"/{TID}/1", token)
        self.assertEqual((code, headers["upload-offset"], headers["upload-length"]),
                         (200, str(len(first)), str(len(first))))
        code, headers, body = self.request("POST", f"/{TID}/", token,
                                           Upload_Concat=f"final;/transfers/{TID}/1 {BASE}/{TID}/3")
        self.assertEqual(code, 201, body)
        self.assertEqual(headers["upload-offset"], str(len(WHOLE)))
        self.clock.advance(0)
        replies = [(m.type, m.body) for _, m in self.db.run_now(fake_link.FakeOutbox.take)]
        self.assertEqual([kind for kind, _ in replies], ["file.registered"])
        self.assertEqual(self.objects.objects["projects/p1/files/faaaa"][0], WHOLE)
        # The token dies with the transfer.
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token)[0], 401)

    def test_a_restart_keeps_only_what_s3_holds(self) -> None:
        token = self.begin()
        self.create(token, 1, 2)
        self.patch(token, 1, 0, CHUNKS[0] + CHUNKS[1][:MiB])
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token)[1]["upload-offset"], str(PART + MiB))
        self.restart()
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token)[1]["upload-offset"], str(PART))
        self.assertEqual(self.patch(token, 1, PART + MiB, b"x")[0], 409)
        self.assertEqual(self.patch(token, 1, PART, CHUNKS[1])[1]["upload-offset"], str(2 * PART))
        self.assertEqual(self.stored_parts(), {1: CHUNKS[0], 2: CHUNKS[1]})

    def test_tokens(self) -> None:
        token = self.begin()
        other = self.begin(OTHER)
        self.create(token, 1, 1)
        for bad, status in [(None, 401), ("nonsense", 401), (other, 403)]:
            code, headers, body = self.request("HEAD", f"/{TID}/1", bad)
            self.assertEqual(code, status, body)
            self.assertNotIn(b"Traceback", body)
        self.assertEqual(self.create(other, 1, 1)[0], 403)
        # A new token replaces the old one: replaying the old one fails.
        newer = self.authorize()
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token)[0], 401)
        self.assertEqual(self.request("HEAD", f"/{TID}/1", newer)[0], 200)
        self.clock.advance(901)
        self.assertEqual(self.patch(newer, 1, 0, CHUNKS[0])[0], 401)
        self.assertEqual(self.objects.uploads[next(iter(self.objects.uploads))].parts, {})
        self.assertEqual(self.db.conn.execute("SELECT COUNT(*) FROM receiver_partials").fetchone()[0], 1)

    def test_refusals_store_nothing(self) -> None:
        token = self.begin()
        self.assertEqual(self.request("POST", f"/{TID}/", token, Upload_Length="5")[0], 400)
        self.assertEqual(self.create(token, 1, 9)[0], 400)
        self.assertEqual(self.create(token, 1, 1, md5s=b"short")[0], 400)
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token)[0], 404)
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token, Tus_Resumable="0.2")[0], 412)
        self.create(token, 1, 1)
        self.assertEqual(self.patch(token, 1, 5, b"abc")[0], 409)
        self.assertEqual(self.patch(token, 1, 0, CHUNKS[0] + b"more")[0], 413)
        # A body that fails its Upload-Checksum is discarded whole.
        bad = encode_checksum("sha256", hashlib.sha256(b"other").digest())
        code, headers, _ = self.patch(token, 1, 0, b"abc", Upload_Checksum=bad)
        self.assertEqual((code, headers["upload-offset"]), (460, "0"))
        good = encode_checksum("sha1", hashlib.sha1(b"\x01" * 10).digest())
        self.assertEqual(self.patch(token, 1, 0, b"\x01" * 10, Upload_Checksum=good)[1]["upload-offset"], "10")
        # A part whose bytes do not have the announced MD5 never reaches S3.
        code, headers, _ = self.patch(token, 1, 10, b"\x07" * (PART - 10))
        self.assertEqual((code, headers["upload-offset"]), (460, "0"))
        self.assertEqual(self.stored_parts(), {})
        # The final upload needs every part.
        self.assertEqual(self.request("POST", f"/{TID}/", token, Upload_Concat=f"final;/transfers/{TID}/1")[0], 400)
        self.assertEqual(self.db.conn.execute("SELECT COUNT(*) FROM transfer_requests").fetchone()[0], 0)

    def test_s3_refusing_a_part(self) -> None:
        from relay.cloud.objects import ObjectStoreError

        token = self.begin()
        self.create(token, 1, 1)
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token)[1]["upload-offset"], "0")
        self.objects.fail_next(ObjectStoreError("UploadPart: AccessDenied", transient=False))
        code, headers, _ = self.patch(token, 1, 0, CHUNKS[0])
        self.assertEqual(code, 503)
        self.assertEqual(self.stored_parts(), {})
        # The held part is written on the next look, or dropped.
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token)[1]["upload-offset"], str(PART))
        self.assertEqual(self.stored_parts(), {1: CHUNKS[0]})

    def test_options_needs_no_token(self) -> None:
        code, headers, _ = self.request("OPTIONS", f"/{TID}/", None)
        self.assertEqual(code, 204)
        self.assertEqual(headers["tus-extension"], "creation,checksum,termination,concatenation")
        self.assertIn("sha256", headers["tus-checksum-algorithm"])

    def test_parts_held_are_bounded_and_termination_forgets(self) -> None:
        self.restart(max_streams=1)
        token = self.begin()
        self.create(token, 1, 1)
        self.create(token, 2, 2)
        self.assertEqual(self.patch(token, 1, 0, CHUNKS[0][:100])[1]["upload-offset"], "100")
        # One part may be held: an idle holder's bytes give way to a new stream.
        self.assertEqual(self.patch(token, 2, 0, CHUNKS[1][:50])[1]["upload-offset"], "50")
        self.assertEqual(self.request("HEAD", f"/{TID}/1", token)[1]["upload-offset"], "0")
        # Termination: the partial upload is forgotten (creating it again is allowed).
        self.assertEqual(self.request("DELETE", f"/{TID}/2", token)[0], 204)
        self.assertEqual(self.request("HEAD", f"/{TID}/2", token)[0], 404)
        self.assertEqual(self.create(token, 2, 2)[0], 201)
        self.assertEqual(self.request("HEAD", f"/{TID}/2", token)[1]["upload-offset"], "0")


def test_md5_metadata_is_raw_digests() -> None:
    assert base64.b64decode(encode_metadata({"md5s": md5(b"a")}).split(" ")[1]) == md5(b"a")
