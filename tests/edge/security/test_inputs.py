"""
Bad input against a running edge: many ranges on static files, lone
surrogates and non-characters in every text field, deep JSON, CRLF and
active types in tus metadata.  Each gets its 4xx with a JSON (or tus)
error, nothing stored changes, and no traceback reaches anyone.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import treq
from twisted.trial.unittest import SynchronousTestCase, TestCase

from relay.media_types import parse_media_type, stored_content_type
from relay.text import BadText, loads
from tests.edge.security.world import PASSWORD, SecureEdge, open_fds


class RangeTests(TestCase):
    timeout = 60

    async def test_many_ranges_get_the_whole_file_at_once(self) -> None:
        edge = SecureEdge(self)
        whole = (edge.config.edge.web_dir / "static" / "app.css").read_bytes()
        # Warm up (first requests open the files the edge keeps).
        await edge.exchange(edge.request_head("GET", "/static/app.css", {"Connection": "close"}))
        before = open_fds()
        for ranges in (",".join(["0-1"] * 1000), ",".join(["0-"] * 200)):
            seen = await edge.exchange(
                edge.request_head("GET", "/static/app.css", {"Range": f"bytes={ranges}", "Connection": "close"}),
                timeout=5,
            )
            self.assertEqual(seen.status, 200, seen.answer[:200])
            self.assertEqual(seen.body, whole)
        seen = await edge.exchange(
            edge.request_head("GET", "/static/app.css", {"Range": "bytes=0-9", "Connection": "close"}))
        self.assertEqual((seen.status, seen.body), (206, whole[:10]))
        await edge._settle()
        self.assertLessEqual(open_fds(), before, "every file handle was closed")


def metadata(**items: bytes) -> str:
    return ",".join(f"{k} {base64.b64encode(v).decode()}" for k, v in items.items())


class TextTests(TestCase):
    timeout = 60

    async def post(self, edge: SecureEdge, path: str, raw: bytes, cookies: Any = None,
                   csrf: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if csrf:
            headers["X-CSRF-Token"] = csrf
        response = await treq.post(f"{edge.base}{path}", data=raw, headers=headers, cookies=cookies,
                                   persistent=False)
        content = await response.content()
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"], content)
        return response.code, json.loads(content)

    def stored(self, edge: SecureEdge) -> tuple[int, int]:
        return edge.db.run_now(lambda c: (
            c.execute("SELECT count(*) FROM pending_commands").fetchone()[0],
            c.execute("SELECT count(*) FROM sessions").fetchone()[0],
        ))

    async def test_lone_surrogates_non_characters_and_deep_json_get_400(self) -> None:
        edge = SecureEdge(self)
        response = await treq.post(f"{edge.base}/api/login", json={"name": "alice", "password": PASSWORD},
                                   persistent=False)
        csrf = (await response.json())["csrf_token"]
        cookies = response.cookies()
        before = self.stored(edge)
        bad = [
            b'{"name": "a\\ud800b"}', b'{"name": "a\\udc00"}', b'{"name": "\\ud83d"}',
            b'{"name": "x", "description": "\\ufffe"}', '{"name": "\U0010ffff"}'.encode(),
            b'{"name": "ok", "\\ud800": 1}', b"[" * 10_000 + b"]" * 10_000,
            b'{"a": ' * 5000 + b"1" + b"}" * 5000, b'{"name": "\xff\xfe"}',
        ]
        for raw in bad:
            for path in ("/api/projects", "/api/login", "/api/password", "/api/jobs"):
                code, body = await self.post(edge, path, raw, cookies, csrf)
                self.assertEqual(code, 400, (path, raw[:40], body))
                self.assertNotIn("Traceback", json.dumps(body))
        # A login name with a surrogate: 400, not a 500 page.
        code, body = await self.post(edge, "/api/login", b'{"name": "a\\ud800", "password": "x"}')
        self.assertEqual(code, 400)
        self.assertIn("valid Unicode", body["error"])
        self.assertEqual(self.stored(edge), before)
        # Still fine: a valid name with characters outside the BMP.
        code, body = await self.post(edge, "/api/projects", json.dumps({"name": "Zeus \U0001f600"}).encode(),
                                     cookies, csrf)
        self.assertEqual(code, 202, body)

    async def test_tus_filetype_must_be_a_media_type(self) -> None:
        edge = SecureEdge(self)
        await edge.uploads_ready()
        auth = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {edge.key}", "Upload-Length": "5"}
        for bad in (b"text/plain\r\nX-Evil: 1", b"text/html\n", b"nonsense", b"text/\xff", b"a/b; c"):
            response = await treq.post(f"{edge.base}/files/", headers={**auth,
                                       "Upload-Metadata": metadata(filename=b"f", filetype=bad)},
                                       persistent=False)
            self.assertEqual(response.code, 400, bad)
            self.assertIn(b"filetype", await response.content())
        for key in ("filename", "project", "filetype"):
            for bad in (b"a\xed\xa0\x80b", b"x\xef\xbf\xbe", b"\xff"):
                response = await treq.post(f"{edge.base}/files/", headers={**auth,
                                           "Upload-Metadata": metadata(**{key: bad})}, persistent=False)
                self.assertEqual(response.code, 400, (key, bad))
                self.assertIn(key.encode(), await response.content())
        self.assertEqual(edge.db.run_now(lambda c: c.execute("SELECT count(*) FROM uploads").fetchone()[0]), 0)
        response = await treq.post(f"{edge.base}/files/", headers={**auth,
                                   "Upload-Metadata": metadata(filename=b"f", filetype=b"Image/PNG; q=1")},
                                   persistent=False)
        self.assertEqual(response.code, 201)
        stored = edge.db.run_now(lambda c: c.execute("SELECT filetype FROM uploads").fetchone()[0])
        self.assertEqual(stored, "image/png")


class TextUnitTests(SynchronousTestCase):
    def test_loads(self) -> None:
        self.assertEqual(loads(b'{"a": ["\\ud83d\\ude00", "[{"]}'), {"a": ["\U0001f600", "[{"]})
        for bad in (b'"\\ud800"', b'["\\udfff"]', b'{"\\ufdd0": 1}', b"[" * 33 + b"]" * 33, b"{", b'"\\'):
            self.assertRaises(BadText, loads, bad)
        loads(b"[" * 32 + b"]" * 32)

    def test_media_types(self) -> None:
        self.assertEqual(parse_media_type("Image/PNG; charset=\"x\""), "image/png")
        self.assertEqual(parse_media_type(""), "")
        for bad in ("text/html\r\n", "text", "text/", "a b/c", "a/b;c", "x/y\x00"):
            self.assertRaises(ValueError, parse_media_type, bad)
        self.assertEqual(stored_content_type("image/png"), "image/png")
        for active in ("text/html", "image/svg+xml", "application/xhtml+xml", "text/javascript", "text/html\r\n",
                       "", "application/x-unknown"):
            self.assertEqual(stored_content_type(active), "application/octet-stream", active)
