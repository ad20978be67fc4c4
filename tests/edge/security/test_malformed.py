"""
Malformed requests of every kind against a running edge: each gets a 4xx
(or an ordinary answer), never a 500, and nothing is logged as an error
(trial fails a test that logs one, so no traceback reaches the log).
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import TestCase

from tests.edge.security.world import SecureEdge


class MalformedRequestTests(TestCase):
    timeout = 120

    async def test_no_input_gets_a_500_or_a_traceback(self) -> None:
        edge = SecureEdge(self)
        await edge.uploads_ready()
        k = edge.key
        cases = [
            b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /api/projects/%ff HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + k.encode() + b"\r\nConnection: close\r\n\r\n",
            b"GET /api/files?project=%ff%fe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + k.encode() + b"\r\nConnection: close\r\n\r\n",
            b"GET /api/files?project=" + b"a"*8000 + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + k.encode() + b"\r\nConnection: close\r\n\r\n",
            b"GET /static/app.css HTTP/1.1\r\nHost: x\r\nRange: bytes=abc\r\nConnection: close\r\n\r\n",
            b"GET /static/app.css HTTP/1.1\r\nHost: x\r\nRange: bytes=99999-\r\nConnection: close\r\n\r\n",
            b"GET /static/app.css HTTP/1.1\r\nHost: x\r\nRange: bytes=-0\r\nConnection: close\r\n\r\n",
            b"GET /static/app.css HTTP/1.1\r\nHost: x\r\nIf-Modified-Since: garbage\xff\r\nConnection: close\r\n\r\n",
            b"GET /api/me HTTP/1.1\r\nHost: x\r\nCookie: relay_session=\xff\xfe\r\nConnection: close\r\n\r\n",
            b"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
            b"GET /api/me HTTP/1.1\r\nHost: x\r\nAuthorization: \r\nConnection: close\r\n\r\n",
            b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + k.encode() + b"\r\nLast-Event-ID: 99999999999999999999999999999\r\nConnection: close\r\n\r\n",
            b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer " + k.encode() + b"\r\nUpload-Length: 99999999999999999999\r\nConnection: close\r\n\r\n",
            b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer " + k.encode() + b"\r\nUpload-Length: 5\r\nUpload-Metadata: filename \xff\xfe,project \xff\r\nConnection: close\r\n\r\n",
            b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer " + k.encode() + b"\r\nUpload-Length: 5\r\nUpload-Metadata: project " + base64.b64encode(b"\xed\xa0\x80") + b"\r\nConnection: close\r\n\r\n",
            b"POST /files/ HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer " + k.encode() + b"\r\nUpload-Concat: final;/files/../../etc /files/%ff\r\nConnection: close\r\n\r\n",
            b"PATCH /files/zzz HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nAuthorization: Bearer " + k.encode() + b"\r\nUpload-Offset: -1\r\nContent-Type: application/offset+octet-stream\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
            b"POST /files/ HTTP/1.1\r\nHost: x\r\nX-HTTP-Method-Override: \xff\r\nTus-Resumable: 1.0.0\r\nConnection: close\r\n\r\n",
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\nContent-Length: 9\r\nConnection: close\r\n\r\nhello",
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: -5\r\nConnection: close\r\n\r\n",
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{\"name\": 1, \"password\": 2}",
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 47\r\nConnection: close\r\n\r\n{\"name\": \"" + b"a"*10 + b"\", \"password\": \"" + b"b"*10 + b"\", \"x\":1e999}",
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8\r\nConnection: close\r\n\r\n1e999999",
            b"GET / HTTP/1.1\r\nHost: \xff\r\nConnection: close\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET http://evil/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /metrics?x=\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"DELETE /api/notices/%ff HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + k.encode() + b"\r\nConnection: close\r\n\r\n",
            b"POST /api/uploads/%ff/retry HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + k.encode() + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b"GET /api/uploads/" + b"a"*5000 + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + k.encode() + b"\r\nConnection: close\r\n\r\n",
        ]
        for case in cases:
            seen = await edge.exchange(case, timeout=10)
            self.assertIsNotNone(seen.status, case[:80])
            assert seen.status is not None
            self.assertLess(seen.status, 500, (case[:80], seen.answer[:300]))
            self.assertNotIn(b"Traceback", seen.answer)
        # Undecodable URLs are refused by the listener, with a JSON reason.
        seen = await edge.exchange(b"GET /api/projects/%ff HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual((seen.status, seen.header("content-type")), (400, "application/json"))
