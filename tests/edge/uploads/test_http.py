"""
tus over HTTP: every extension relay advertises and every error path of
the spec, against the uploads component in this process (its site on the
test reactor, requests through in-memory connections).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from twisted.trial.unittest import TestCase

from relay.edge.config import UploadsSection
from relay.edge.uploads.store import UploadState

from .harness import (
    CONFIG,
    KEY,
    OTHER_KEY,
    Edge,
    checksum,
    metadata,
    random_bytes,
    tus_headers,
)

OCTETS = "application/offset+octet-stream"


class EdgeTestCase(TestCase):
    config: UploadsSection = CONFIG
    cors: tuple[str, ...] = ()
    timeout = 60

    async def edge(self, config: UploadsSection | None = None, **kwargs: object) -> Edge:
        """
        A started edge with C{config} (the class's, with its C{cors}, by
        default); C{kwargs} go to L{Edge}.
        """
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        if config is None:
            config = replace(self.config, cors_origins=self.cors)
        edge = await Edge(directory, config, **kwargs).start()  # type: ignore[arg-type]
        self.addCleanup(edge.stop)
        return edge


class CoreTests(EdgeTestCase):
    async def test_options_advertises_everything(self) -> None:
        edge = await self.edge()
        r = await edge.request("OPTIONS", "/files/")
        self.assertEqual(r.code, 204)
        self.assertEqual(r.header("Tus-Version"), "1.0.0")
        self.assertEqual(
            set(r.header("Tus-Extension").split(",")),
            {"creation", "creation-with-upload", "creation-defer-length", "expiration",
             "checksum", "termination", "concatenation"},
        )
        self.assertEqual(r.header("Tus-Max-Size"), str(1 << 24))
        self.assertEqual(set(r.header("Tus-Checksum-Algorithm").split(",")), {"sha1", "md5", "sha256"})

    async def test_version_is_required(self) -> None:
        edge = await self.edge()
        for headers in ({}, {"Tus-Resumable": "0.2.2"}):
            r = await edge.request("POST", "/files/", {"Authorization": f"Bearer {KEY}",
                                                       "Upload-Length": "1", **headers})
            self.assertEqual(r.code, 412)
            self.assertEqual(r.header("Tus-Version"), "1.0.0")
        self.assertEqual(await edge.store.owned_by("alice"), [])

    async def test_credentials_are_required(self) -> None:
        edge = await self.edge()
        r = await edge.request("POST", "/files/", tus_headers(None, Upload_Length="5"))
        self.assertEqual(r.code, 401)
        self.assertIn("Bearer", r.header("WWW-Authenticate"))
        r = await edge.request("POST", "/files/", tus_headers("wrong", Upload_Length="5"))
        self.assertEqual(r.code, 401)
        url = await edge.create(5)
        for method in ("HEAD", "DELETE"):
            self.assertEqual((await edge.request(method, url, tus_headers(None))).code, 401)
        r = await edge.request("PATCH", url, tus_headers(None, Upload_Offset="0",
                                                         Content_Type=OCTETS), b"hello")
        self.assertEqual(r.code, 401)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "0")

    async def test_session_cookie_works_too(self) -> None:
        edge = await self.edge()
        r = await edge.request("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Length": "3",
                                                   "Cookie": "relay_session=s-alice"})
        self.assertEqual(r.code, 201)

    async def test_a_session_with_a_one_time_password_must_change_it_first(self) -> None:
        edge = await self.edge()
        edge.auth.add_user("carol", session="s-carol", must_change_password=True)
        r = await edge.request("POST", "/files/", {"Tus-Resumable": "1.0.0", "Upload-Length": "3",
                                                   "Cookie": "relay_session=s-carol"})
        self.assertEqual(r.code, 403)
        self.assertEqual(await edge.store.owned_by("carol"), [])

    async def test_create_head_patch(self) -> None:
        edge = await self.edge()
        meta = metadata(filename="plan.dwg", filetype="application/acad")
        url = await edge.create(10, Upload_Metadata=meta)
        self.assertTrue(url.startswith("/files/"))
        r = await edge.head(url)
        self.assertEqual(r.code, 200)
        self.assertEqual(r.header("Upload-Offset"), "0")
        self.assertEqual(r.header("Upload-Length"), "10")
        self.assertEqual(r.header("Upload-Metadata"), meta)
        self.assertEqual(r.header("Cache-Control"), "no-store")
        self.assertEqual(r.header("Tus-Resumable"), "1.0.0")
        self.assertIn("GMT", r.header("Upload-Expires"))
        r = await edge.patch(url, 0, b"01234")
        self.assertEqual((r.code, r.header("Upload-Offset")), (204, "5"))
        self.assertIn("GMT", r.header("Upload-Expires"))
        r = await edge.patch(url, 5, b"56789")
        self.assertEqual((r.code, r.header("Upload-Offset")), (204, "10"))
        r = await edge.head(url)
        self.assertEqual(r.header("Upload-Offset"), "10")
        self.assertIsNone(r.header("Upload-Expires"))
        self.assertEqual(edge.stored(url), b"0123456789")
        upload = await edge.store.get(url.rsplit("/", 1)[1])
        self.assertEqual((upload.state, upload.filename, upload.filetype, upload.project),
                         (UploadState.STAGED, "plan.dwg", "application/acad", "home-alice"))
        self.assertIn(upload.id, edge.sink.staged)

    async def test_wrong_offset_is_409_and_changes_nothing(self) -> None:
        edge = await self.edge()
        url = await edge.create(10)
        await edge.patch(url, 0, b"abc")
        for offset in (0, 5):
            r = await edge.patch(url, offset, b"zzz")
            self.assertEqual(r.code, 409)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "3")
        self.assertEqual(edge.stored(url), b"abc")

    async def test_patch_needs_offset_content_type_and_integer_offset(self) -> None:
        edge = await self.edge()
        url = await edge.create(10)
        r = await edge.request("PATCH", url, tus_headers(Upload_Offset="0",
                                                         Content_Type="text/plain"), b"x")
        self.assertEqual(r.code, 415)
        r = await edge.request("PATCH", url, tus_headers(Content_Type=OCTETS), b"x")
        self.assertEqual(r.code, 400)
        r = await edge.patch(url, -1, b"x")  # type: ignore[arg-type]
        self.assertEqual(r.code, 400)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "0")

    async def test_body_past_length_is_refused(self) -> None:
        edge = await self.edge()
        url = await edge.create(4)
        r = await edge.patch(url, 0, b"too long")
        self.assertEqual(r.code, 413)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "0")

    async def test_unknown_upload_is_404_and_methods_405(self) -> None:
        edge = await self.edge()
        self.assertEqual((await edge.head("/files/" + "0" * 32)).code, 404)
        self.assertEqual((await edge.head("/files/../../etc")).code, 404)
        r = await edge.request("GET", "/files/" + "0" * 32, tus_headers())
        self.assertEqual(r.code, 405)
        r = await edge.request("PUT", "/files/", tus_headers())
        self.assertEqual(r.code, 405)

    async def test_method_override(self) -> None:
        edge = await self.edge()
        url = await edge.create(3)
        headers = tus_headers(X_HTTP_Method_Override="PATCH", Upload_Offset="0", Content_Type=OCTETS)
        r = await edge.request("POST", url, headers, b"abc")
        self.assertEqual((r.code, r.header("Upload-Offset")), (204, "3"))
        url2 = await edge.create(3)
        r = await edge.request("POST", url2, tus_headers(X_HTTP_Method_Override="DELETE"))
        self.assertEqual(r.code, 204)
        self.assertEqual((await edge.head(url2)).code, 404)


class OwnershipTests(EdgeTestCase):
    async def test_others_get_404(self) -> None:
        edge = await self.edge()
        url = await edge.create(6)
        await edge.patch(url, 0, b"abc")
        self.assertEqual((await edge.head(url, key=OTHER_KEY)).code, 404)
        self.assertEqual((await edge.patch(url, 3, b"def", key=OTHER_KEY)).code, 404)
        r = await edge.request("DELETE", url, tus_headers(OTHER_KEY))
        self.assertEqual(r.code, 404)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "3")
        r = await edge.request("POST", "/files/", tus_headers(
            OTHER_KEY, Upload_Length="3", Upload_Concat=f"final;{url}"))
        self.assertEqual(r.code, 400)

    async def test_project_access(self) -> None:
        edge = await self.edge()
        r = await edge.request("POST", "/files/", tus_headers(
            Upload_Length="1", Upload_Metadata=metadata(project="secret")))
        self.assertEqual(r.code, 403)
        self.assertIn(b"secret", r.body)
        url = await edge.create(1, Upload_Metadata=metadata(project="shared"))
        upload = await edge.store.get(url.rsplit("/", 1)[1])
        self.assertEqual(upload.project, "shared")

    async def test_default_project_not_replicated_yet_is_retryable(self) -> None:
        edge = await self.edge()

        def missing(user_id: str) -> object:
            raise LookupError(user_id)

        self.patch(edge.projects, "default_project", missing)
        r = await edge.request("POST", "/files/", tus_headers(Upload_Length="1"))
        self.assertEqual((r.code, r.header("Retry-After")), (503, "5"))
        self.assertEqual(await edge.store.owned_by("alice"), [])

    async def test_filename_is_sanitised(self) -> None:
        edge = await self.edge()
        name = "../../etc/pass\x00wd\u202e.txt"
        url = await edge.create(1, Upload_Metadata=metadata(filename=name))
        upload = await edge.store.get(url.rsplit("/", 1)[1])
        self.assertEqual(upload.filename, "passwd.txt")
        self.assertEqual(sorted(p.suffix for p in edge.spool.directory.iterdir()),
                         [".data", ".key", ".tail"])

    async def test_listing(self) -> None:
        edge = await self.edge()
        url = await edge.create(4, Upload_Metadata=metadata(filename="a.bin"))
        await edge.patch(url, 0, b"ab")
        done = await edge.create(1)
        await edge.patch(done, 0, b"x")
        await edge.create(1, key=OTHER_KEY)
        r = await edge.request("GET", "/api/uploads", {"Authorization": f"Bearer {KEY}"})
        self.assertEqual(r.code, 200)
        uploads = {u["url"]: u for u in json.loads(r.body)["uploads"]}
        self.assertEqual(set(uploads), {url, done})
        self.assertEqual((uploads[url]["state"], uploads[url]["progress"]), ("receiving", 0.5))
        self.assertEqual(uploads[url]["filename"], "a.bin")
        self.assertEqual(uploads[done]["state"], "staged")
        r = await edge.request("GET", "/api/uploads/" + url.rsplit("/", 1)[1],
                               {"Authorization": f"Bearer {OTHER_KEY}"})
        self.assertEqual(r.code, 404)
        self.assertEqual((await edge.request("GET", "/api/uploads")).code, 401)


class CreationTests(EdgeTestCase):
    async def test_creation_errors(self) -> None:
        edge = await self.edge()
        cases = [
            ({}, 400),
            ({"Upload-Length": "5", "Upload-Defer-Length": "1"}, 400),
            ({"Upload-Defer-Length": "2"}, 400),
            ({"Upload-Length": "abc"}, 400),
            ({"Upload-Length": str((1 << 24) + 1)}, 413),
            ({"Upload-Length": "5", "Upload-Metadata": "filename !!notbase64"}, 400),
            ({"Upload-Length": "5", "Upload-Metadata": "a YQ==,a YQ=="}, 400),
            ({"Upload-Length": "5", "Upload-Concat": "sideways"}, 400),
        ]
        for extra, code in cases:
            r = await edge.request("POST", "/files/", tus_headers(**extra))
            self.assertEqual(r.code, code, extra)
            self.assertTrue(r.body.strip(), extra)
        self.assertEqual(await edge.store.owned_by("alice"), [])
        self.assertEqual(edge.spool.list_ids(), [])

    async def test_empty_upload_completes_at_once(self) -> None:
        edge = await self.edge()
        url = await edge.create(0)
        r = await edge.head(url)
        self.assertEqual((r.header("Upload-Offset"), r.header("Upload-Length")), ("0", "0"))
        self.assertEqual(edge.stored(url), b"")
        self.assertEqual(len(edge.sink.staged), 1)

    async def test_creation_with_upload(self) -> None:
        edge = await self.edge()
        data = random_bytes(300_000)
        headers = tus_headers(Upload_Length=str(len(data) + 5), Content_Type=OCTETS)
        r = await edge.request("POST", "/files/", headers, data)
        self.assertEqual((r.code, r.header("Upload-Offset")), (201, str(len(data))))
        url = r.header("Location")
        r = await edge.patch(url, len(data), b"12345")
        self.assertEqual(r.code, 204)
        self.assertEqual(edge.stored(url), data + b"12345")

    async def test_creation_with_upload_and_checksum(self) -> None:
        edge = await self.edge()
        headers = tus_headers(Upload_Length="6", Content_Type=OCTETS,
                              Upload_Checksum=checksum("sha1", b"abcdef"))
        r = await edge.request("POST", "/files/", headers, b"abcdef")
        self.assertEqual((r.code, r.header("Upload-Offset")), (201, "6"))
        headers["Upload-Checksum"] = checksum("sha1", b"other")
        r = await edge.request("POST", "/files/", headers, b"abcdef")
        self.assertEqual((r.code, r.header("Upload-Offset")), (201, "0"))

    async def test_deferred_length(self) -> None:
        edge = await self.edge()
        url = await edge.create(None)
        r = await edge.head(url)
        self.assertEqual((r.header("Upload-Defer-Length"), r.header("Upload-Length")), ("1", None))
        await edge.patch(url, 0, b"abc")
        r = await edge.patch(url, 3, b"de", Upload_Length="4")
        self.assertEqual(r.code, 413)
        r = await edge.patch(url, 3, b"de", Upload_Length="2")
        self.assertEqual(r.code, 400)
        r = await edge.patch(url, 3, b"de", Upload_Length="5")
        self.assertEqual((r.code, r.header("Upload-Offset")), (204, "5"))
        r = await edge.head(url)
        self.assertEqual((r.header("Upload-Length"), r.header("Upload-Defer-Length")), ("5", None))
        self.assertEqual(edge.stored(url), b"abcde")
        self.assertEqual(len(edge.sink.staged), 1)


class ChecksumTests(EdgeTestCase):
    async def test_algorithms(self) -> None:
        edge = await self.edge()
        data = random_bytes(3000)
        url = await edge.create(len(data))
        for i, algorithm in enumerate(("sha1", "md5", "sha256")):
            chunk = data[i * 1000 : (i + 1) * 1000]
            r = await edge.patch(url, i * 1000, chunk, Upload_Checksum=checksum(algorithm, chunk))
            self.assertEqual(r.code, 204, r.body)
        self.assertEqual(edge.stored(url), data)

    async def test_mismatch_is_460_and_discards_the_chunk(self) -> None:
        for memory in (1 << 20, 1000):  # held in memory; spilled to a scratch file
            edge = await self.edge()
            # Not in [uploads]: the bytes of a checksummed body held in memory.
            edge.service.limits = replace(edge.service.limits, checksum_memory=memory)
            data = random_bytes(200_000)
            url = await edge.create(len(data) + 3)
            await edge.patch(url, 0, b"abc")
            r = await edge.patch(url, 3, data, Upload_Checksum=checksum("sha256", data[:-1]))
            self.assertEqual((r.code, r.header("Upload-Offset")), (460, "3"))
            self.assertEqual((await edge.head(url)).header("Upload-Offset"), "3")
            self.assertEqual(edge.stored(url), b"abc")
            r = await edge.patch(url, 3, data, Upload_Checksum=checksum("sha256", data))
            self.assertEqual((r.code, r.header("Upload-Offset")), (204, str(len(data) + 3)))
            self.assertEqual(edge.stored(url), b"abc" + data)
            self.assertEqual(edge.spool.list_ids(), [url.rsplit("/", 1)[1]])

    async def test_bad_checksum_headers(self) -> None:
        edge = await self.edge()
        url = await edge.create(3)
        for value in ("crc32 AAAA", "sha1", "sha1 !!!", "sha1 YWJj"):
            r = await edge.patch(url, 0, b"abc", Upload_Checksum=value)
            self.assertEqual(r.code, 400, value)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "0")


class TerminationTests(EdgeTestCase):
    async def test_delete(self) -> None:
        edge = await self.edge()
        url = await edge.create(10)
        await edge.patch(url, 0, b"abc")
        r = await edge.request("DELETE", url, tus_headers())
        self.assertEqual(r.code, 204)
        self.assertEqual((await edge.head(url)).code, 404)
        self.assertEqual((await edge.patch(url, 3, b"d")).code, 404)
        self.assertEqual(edge.spool.list_ids(), [])
        self.assertEqual(list(edge.spool.directory.iterdir()), [])

    async def test_complete_upload_cannot_be_terminated(self) -> None:
        edge = await self.edge()
        url = await edge.create(1)
        await edge.patch(url, 0, b"x")
        r = await edge.request("DELETE", url, tus_headers())
        self.assertEqual(r.code, 409)
        self.assertEqual(edge.stored(url), b"x")


class ConcatenationTests(EdgeTestCase):
    async def test_partial_and_final(self) -> None:
        edge = await self.edge()
        pieces = [random_bytes(70_000), random_bytes(5), random_bytes(100_000)]
        urls = []
        for piece in pieces:
            url = await edge.create(len(piece), Upload_Concat="partial")
            self.assertEqual((await edge.patch(url, 0, piece)).code, 204)
            self.assertEqual((await edge.head(url)).header("Upload-Concat"), "partial")
            urls.append(url)
        self.assertEqual(edge.sink.staged, {})
        final = "final;" + " ".join([edge.url + urls[0], *urls[1:]])
        r = await edge.request("POST", "/files/", tus_headers(
            Upload_Concat=final, Upload_Metadata=metadata(filename="joined.bin")))
        self.assertEqual(r.code, 201, r.body)
        url = r.header("Location")
        r = await edge.head(url)
        self.assertEqual(r.header("Upload-Length"), str(sum(map(len, pieces))))
        self.assertEqual(r.header("Upload-Offset"), r.header("Upload-Length"))
        self.assertEqual(r.header("Upload-Concat"), "final;" + " ".join(urls))
        self.assertEqual(edge.stored(url), b"".join(pieces))
        self.assertEqual(list(edge.sink.staged.values())[0].filename, "joined.bin")
        self.assertEqual((await edge.patch(url, 0, b"x")).code, 403)
        for part in urls:  # consumed: erased
            self.assertEqual((await edge.head(part)).code, 404)

    async def test_final_needs_complete_partial_uploads(self) -> None:
        edge = await self.edge()
        unfinished = await edge.create(10, Upload_Concat="partial")
        await edge.patch(unfinished, 0, b"abc")
        plain = await edge.create(1)
        await edge.patch(plain, 0, b"x")
        for parts in (unfinished, plain, "/files/" + "f" * 32, "http://elsewhere/x/y"):
            r = await edge.request("POST", "/files/", tus_headers(Upload_Concat=f"final;{parts}"))
            self.assertEqual(r.code, 400, parts)
        r = await edge.request("POST", "/files/", tus_headers(
            Upload_Concat=f"final;{unfinished}", Upload_Length="3"))
        self.assertEqual(r.code, 400)
        self.assertEqual((await edge.head(unfinished)).header("Upload-Offset"), "3")


class CorsTests(EdgeTestCase):
    cors = ("https://app.example.com",)

    async def test_preflight_and_exposed_headers(self) -> None:
        edge = await self.edge()
        r = await edge.request("OPTIONS", "/files/", {
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "tus-resumable,upload-offset"})
        self.assertEqual(r.code, 204)
        self.assertEqual(r.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertIn("PATCH", r.header("Access-Control-Allow-Methods"))
        self.assertIn("Upload-Offset", r.header("Access-Control-Allow-Headers"))
        r = await edge.request("POST", "/files/", {**tus_headers(Upload_Length="1"),
                                                   "Origin": "https://app.example.com"})
        self.assertEqual(r.code, 201)
        exposed = r.header("Access-Control-Expose-Headers")
        for name in ("Location", "Upload-Offset", "Upload-Expires", "Tus-Resumable"):
            self.assertIn(name, exposed)
        r = await edge.request("OPTIONS", "/files/", {
            "Origin": "https://evil.example", "Access-Control-Request-Method": "PATCH"})
        self.assertIsNone(r.header("Access-Control-Allow-Origin"))


class LimitTests(EdgeTestCase):
    async def test_user_quota(self) -> None:
        edge = await self.edge(replace(CONFIG, user_quota=1000))
        await edge.create(600)
        r = await edge.request("POST", "/files/", tus_headers(Upload_Length="500"))
        self.assertEqual(r.code, 413)
        self.assertIn(b"limit", r.body)
        deferred = await edge.create(None)
        r = await edge.patch(deferred, 0, b"x" * 500)
        self.assertEqual((r.code, r.header("Upload-Offset")), (413, "400"))
        # Another user is not affected.
        await edge.create(900, key=OTHER_KEY)

    async def test_disk_reserve(self) -> None:
        edge = await self.edge(replace(CONFIG, disk_reserve=1 << 62))
        r = await edge.request("POST", "/files/", tus_headers(Upload_Length="10"))
        self.assertEqual(r.code, 507)
        url = await edge.create(None)
        r = await edge.patch(url, 0, b"abc")
        self.assertEqual((r.code, r.header("Upload-Offset")), (507, "0"))
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "0")

    async def test_expiry_erases_unfinished_uploads(self) -> None:
        edge = await self.edge(replace(CONFIG, expiry=60))
        old = await edge.create(10)
        await edge.patch(old, 0, b"abc")
        done = await edge.create(1)
        await edge.patch(done, 0, b"x")
        edge.advance(59)
        await edge.fired(edge.housekeeping.sweep())
        self.assertEqual(edge.housekeeping.erased, 0)  # not yet
        edge.advance(2)
        fresh = await edge.create(10)
        await edge.fired(edge.housekeeping.sweep())
        self.assertEqual(edge.housekeeping.erased, 1)
        self.assertEqual((await edge.head(old)).code, 404)
        self.assertEqual((await edge.head(fresh)).code, 200)
        self.assertEqual(edge.stored(done), b"x")
        self.assertEqual(sorted(edge.spool.list_ids()),
                         sorted(u.rsplit("/", 1)[1] for u in (done, fresh)))
