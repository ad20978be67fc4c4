"""
L{relay.cloud.objects.S3Objects} against moto's server mode and against
C{rclone serve s3} (which checks signatures, URL expiry and Content-MD5),
both started here as subprocesses on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from relay.cloud.objects import (
    SINGLE_PUT_MAX,
    IObjectStore,
    NoSuchUpload,
    ObjectStoreError,
    S3Objects,
    load_credentials,
    md5_hex,
    multipart_etag,
    object_key,
)
from relay.testing.s3servers import S3Server, start_moto, start_rclone
from relay.testing.transfer import FakeObjectStore

MiB = 1 << 20


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def put(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """A plain HTTP PUT (blocking), as an edge would send it."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request("PUT", f"{u.path}?{u.query}", body=body,
                     headers={"Content-Length": str(len(body)), **headers})
        response = conn.getresponse()
        return response.status, response.read()
    except OSError as e:
        # rclone answers a refused request before reading the body and
        # closes the connection: the client may see only the reset.
        return 0, str(e).encode()
    finally:
        conn.close()


class ObjectsMixin:
    """The same checks against each server."""

    server: ClassVar[S3Server]
    tmp: ClassVar[Any]

    def objects(self, **kwargs: Any) -> S3Objects:
        objects = S3Objects(
            reactor, bucket=self.server.bucket, region="us-east-1",
            endpoint_url=self.server.endpoint, addressing_style="path",
            credentials=self.server.credentials, max_threads=4, **kwargs,
        )
        objects.startService()
        self.addCleanup(objects.stopService)  # type: ignore[attr-defined]
        return objects

    async def test_interface(self) -> None:
        self.assertTrue(verifyObject(IObjectStore, self.objects()))  # type: ignore[attr-defined]
        self.assertTrue(verifyObject(IObjectStore, FakeObjectStore()))  # type: ignore[attr-defined]

    async def test_multipart_round_trip(self) -> None:
        """
        Parts PUT through presigned URLs (out of order, one twice), listed
        over several pages, completed: the object is the parts joined, its
        metadata holds the sha256, its ETag is the multipart ETag.
        """
        objects = self.objects(page_size=2)
        key = object_key("p-1", os.urandom(8).hex())
        chunks = [os.urandom(5 * MiB) for _ in range(4)] + [b"tail"]
        whole = b"".join(chunks)
        sha = hashlib.sha256(whole).hexdigest()
        upload_id = await objects.create_upload(key, {"sha256": sha}, "application/pdf")
        numbered = list(enumerate(chunks, start=1))
        urls = await objects.presign_parts(key, upload_id, [(n, md5_b64(c)) for n, c in numbered], 600)
        self.assertEqual(sorted(urls), [1, 2, 3, 4, 5])  # type: ignore[attr-defined]
        for n, chunk in [*reversed(numbered), numbered[0]]:
            status, body = await deferToThread(put, urls[n], chunk, {"Content-MD5": md5_b64(chunk)})
            self.assertEqual(status, 200, body)  # type: ignore[attr-defined]
        parts = await objects.list_parts(key, upload_id)
        self.assertEqual([(p.number, p.size) for p in parts], [(n, len(c)) for n, c in numbered])  # type: ignore[attr-defined]
        self.assertEqual([p.etag for p in parts], [hashlib.md5(c).hexdigest() for c in chunks])  # type: ignore[attr-defined]
        etag = await objects.complete_upload(key, upload_id, [(p.number, p.etag) for p in parts])
        expected = multipart_etag(hashlib.md5(c).digest() for c in chunks)
        if "-" in etag:
            self.assertEqual(etag, expected)  # type: ignore[attr-defined]
        info = await objects.head(key)
        assert info is not None
        self.assertEqual(info.size, len(whole))  # type: ignore[attr-defined]
        self.assertEqual(info.metadata.get("sha256"), sha)  # type: ignore[attr-defined]
        self.assertEqual(await objects.sha256(key), sha)  # type: ignore[attr-defined]
        with self.assertRaises(NoSuchUpload):  # type: ignore[attr-defined]
            await objects.list_parts(key, upload_id)

    async def test_abort(self) -> None:
        objects = self.objects()
        key = object_key("p-1", os.urandom(8).hex())
        upload_id = await objects.create_upload(key, {}, "")
        await objects.abort_upload(key, upload_id)
        with self.assertRaises(NoSuchUpload):  # type: ignore[attr-defined]
            await objects.list_parts(key, upload_id)
        await objects.abort_upload(key, upload_id)  # gone already: no error
        self.assertIsNone(await objects.head(key))  # type: ignore[attr-defined]

    async def test_put_file_small_and_large(self) -> None:
        """
        A file up to SINGLE_PUT_MAX goes in one PutObject, a larger one in
        parts: both read back as they were, with their content type.
        """
        objects = self.objects()
        for size in (0, 100, SINGLE_PUT_MAX, SINGLE_PUT_MAX + 1):
            data = os.urandom(size)
            path = Path(self.mktemp())  # type: ignore[attr-defined]
            path.write_bytes(data)
            key = object_key("p-1", os.urandom(8).hex())
            await objects.put_file(path, key, "text/plain; charset=utf-8")
            info = await objects.head(key)
            assert info is not None
            self.assertEqual((info.size, info.content_type), (size, "text/plain; charset=utf-8"))  # type: ignore[attr-defined]
            self.assertEqual(await objects.sha256(key), hashlib.sha256(data).hexdigest())  # type: ignore[attr-defined]
            if size <= SINGLE_PUT_MAX:  # one object, its ETag its MD5
                self.assertEqual(info.etag, hashlib.md5(data).hexdigest())  # type: ignore[attr-defined]
            elif self.server.kind == "moto":  # in parts, as S3 shows it
                self.assertTrue(info.etag.endswith("-2"), info.etag)  # type: ignore[attr-defined]

    async def test_unknown_upload(self) -> None:
        objects = self.objects()
        with self.assertRaises(NoSuchUpload):  # type: ignore[attr-defined]
            await objects.list_parts(object_key("p", "nothing"), "no-such-upload-id")


class MotoTests(ObjectsMixin, unittest.TestCase):
    timeout = 60

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = start_moto()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()


class RcloneTests(ObjectsMixin, unittest.TestCase):
    timeout = 60

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="relay-rclone-")
        cls.server = start_rclone(Path(cls.tmp.name))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()
        cls.tmp.cleanup()

    async def _one_part(self, objects: S3Objects, expires: int = 600) -> tuple[str, str, bytes, str]:
        key = object_key("p-1", os.urandom(8).hex())
        upload_id = await objects.create_upload(key, {}, "")
        chunk = os.urandom(MiB)
        urls = await objects.presign_parts(key, upload_id, [(1, md5_b64(chunk))], expires)
        return key, upload_id, chunk, urls[1]

    async def test_url_is_bound_to_its_digest(self) -> None:
        """
        A body that does not match the signed Content-MD5 is refused, and
        so is a request without the header (it is signed).
        """
        objects = self.objects()
        key, upload_id, chunk, url = await self._one_part(objects)
        status, _ = await deferToThread(put, url, chunk, {})
        self.assertNotEqual(status, 200)
        status, _ = await deferToThread(put, url, chunk[::-1], {"Content-MD5": md5_b64(chunk)})
        self.assertNotEqual(status, 200)
        other = md5_b64(chunk[::-1])
        status, _ = await deferToThread(put, url, chunk[::-1], {"Content-MD5": other})
        self.assertNotEqual(status, 200)

    async def test_url_expires(self) -> None:
        objects = self.objects()
        key, upload_id, chunk, url = await self._one_part(objects, expires=1)
        await deferToThread(time.sleep, 2.1)
        status, _ = await deferToThread(put, url, chunk, {"Content-MD5": md5_b64(chunk)})
        self.assertNotEqual(status, 200)

    async def test_wrong_credentials_fail_permanently(self) -> None:
        objects = S3Objects(
            reactor, bucket=self.server.bucket, region="us-east-1", endpoint_url=self.server.endpoint,
            addressing_style="path", credentials=load_credentials(self._bad_credentials()),
        )
        objects.startService()
        self.addCleanup(objects.stopService)
        with self.assertRaises(ObjectStoreError) as caught:
            await objects.create_upload(object_key("p", "f"), {}, "")
        self.assertFalse(caught.exception.transient)
        self.assertNotIn("wrong-secret", str(caught.exception))

    def _bad_credentials(self) -> Path:
        path = Path(self.mktemp())
        path.write_text('access_key_id = "nobody"\nsecret_access_key = "wrong-secret"\n')
        return path


class HelperTests(unittest.SynchronousTestCase):
    def test_object_key(self) -> None:
        self.assertEqual(object_key("p-1", "f_2"), "projects/p-1/files/f_2")
        for project, file_id in (("../x", "f"), ("p", "a/b"), ("", "f"), ("p", "x" * 129)):
            with self.assertRaises(ValueError):
                object_key(project, file_id)

    def test_multipart_etag(self) -> None:
        md5s = [hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()]
        self.assertEqual(multipart_etag(md5s), hashlib.md5(b"".join(md5s)).hexdigest() + "-2")
        self.assertEqual(md5_hex(md5_b64(b"a")), hashlib.md5(b"a").hexdigest())
        with self.assertRaises(ValueError):
            md5_hex("not base64!")

    def test_credentials_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text('access_key_id = "AK"\nsecret_access_key = "SECRET"\n')
        credentials = load_credentials(path)
        self.assertEqual(credentials.access_key_id, "AK")
        self.assertNotIn("SECRET", repr(credentials))
        path.write_text('access_key_id = "AK"\n')
        with self.assertRaises(ValueError) as caught:
            load_credentials(path)
        self.assertIn("secret_access_key", str(caught.exception))
