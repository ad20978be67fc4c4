"""
Request limits before the bytes land, tried against a running edge: huge
and chunked bodies, too many or too large headers, a slowloris, a slow
body, a slow reader, and connection floods.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.edge.security.world import SecureEdge, disk_bytes, held_for, server_sockets

MiB = 1 << 20


class FileWatch:
    """
    The largest number of bytes the edge's open regular files (temporary
    files included, deleted or not) held beyond those open when it started
    watching, sampled every 20 ms; and the data directory's growth.
    """

    def __init__(self, edge: SecureEdge) -> None:
        self.edge = edge
        self.before = set(os.listdir("/proc/self/fd"))
        self.disk_before = disk_bytes(edge.data_dir)
        self.peak = 0
        self.loop = LoopingCall(self.sample)
        self.loop.start(0.02)

    def sample(self) -> None:
        total = 0
        for fd in set(os.listdir("/proc/self/fd")) - self.before:
            try:
                st = os.stat(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
        self.peak = max(self.peak, total)

    def stop(self) -> int:
        self.loop.stop()
        self.sample()
        return max(self.peak, disk_bytes(self.edge.data_dir) - self.disk_before)


def zeros(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    block = b"\0" * chunk
    for _ in range(total // chunk):
        yield block


def chunked(total: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    block = b"%x\r\n" % chunk + b"x" * chunk + b"\r\n"
    for _ in range(total // chunk):
        yield block


#: Every route outside /files/ that takes a body, and some that do not exist.
ROUTES = [
    ("POST", "/api/login"), ("POST", "/api/projects"), ("PATCH", "/api/projects/" + "0" * 32),
    ("POST", "/api/password"), ("POST", "/api/logout"), ("POST", "/api/jobs"),
    ("POST", "/api/uploads/" + "0" * 32 + "/retry"), ("PUT", "/static/app.css"), ("POST", "/nowhere"),
]


class BodyLimitTests(TestCase):
    timeout = 120

    async def test_a_512_mib_body_is_refused_before_it_is_read(self) -> None:
        edge = SecureEdge(self)
        for method, path in ROUTES:
            watch = FileWatch(edge)
            head = edge.request_head(method, path, {"Content-Type": "application/json",
                                                    "Content-Length": str(512 * MiB)})
            seen = await edge.exchange(head, zeros(512 * MiB))
            written = watch.stop()
            self.assertEqual(seen.status, 413, (method, path, seen))
            self.assertEqual(seen.header("content-type"), "application/json")
            self.assertIn("at most 65536 bytes", json.loads(seen.body)["error"])
            self.assertLess(written, 1 * MiB, (method, path))
            # The rest of the body was dropped, not waited for.
            self.assertLess(seen.sent, 64 * MiB, (method, path))

    async def test_a_chunked_body_is_refused_once_it_passes_the_limit(self) -> None:
        edge = SecureEdge(self)
        for method, path in [("POST", "/nowhere"), ("POST", "/api/login"), ("POST", "/api/projects")]:
            watch = FileWatch(edge)
            head = edge.request_head(method, path, {"Content-Type": "application/json",
                                                    "Transfer-Encoding": "chunked"})
            seen = await edge.exchange(head, chunked(256 * MiB))
            written = watch.stop()
            self.assertEqual(seen.status, 413, (method, path, seen))
            self.assertLess(written, 1 * MiB)
            self.assertLess(seen.sent, 64 * MiB)

    async def test_bodies_within_the_limit_still_work(self) -> None:
        edge = SecureEdge(self)
        body = json.dumps({"name": "alice", "password": "wrong", "pad": "x" * 60_000}).encode()
        head = edge.request_head("POST", "/api/login", {"Content-Type": "application/json",
                                                        "Content-Length": str(len(body)),
                                                        "Connection": "close"})
        seen = await edge.exchange(head, [body])
        self.assertEqual(seen.status, 401, seen)
        chunk = b'{"name": "alice", "password": "wrong"}'
        head = edge.request_head("POST", "/api/login", {"Content-Type": "application/json",
                                                        "Transfer-Encoding": "chunked", "Connection": "close"})
        seen = await edge.exchange(head, [b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)])
        self.assertEqual(seen.status, 401, seen)


class HeaderLimitTests(TestCase):
    timeout = 60

    async def test_too_many_or_too_large_headers(self) -> None:
        edge = SecureEdge(self)
        many = {f"X-H{i}": "1" for i in range(100)}
        seen = await edge.exchange(edge.request_head("GET", "/healthz", many))
        self.assertEqual(seen.status, 431, seen)
        self.assertIn("at most 64 headers", json.loads(seen.body)["error"])
        seen = await edge.exchange(edge.request_head("GET", "/healthz", {"X-Big": "x" * 20_000}))
        self.assertEqual(seen.status, 431, seen)
        seen = await edge.exchange(b"NONSENSE\r\n\r\n")
        self.assertEqual(seen.status, 400, seen)
        seen = await edge.exchange(edge.request_head("GET", "/healthz", {"Connection": "close"}))
        self.assertEqual(seen.status, 200)

    async def test_every_answer_is_nosniff_and_names_no_version(self) -> None:
        edge = SecureEdge(self)
        for path in ("/healthz", "/api/me", "/nowhere", "/static/app.css", "/"):
            seen = await edge.exchange(edge.request_head("GET", path, {"Connection": "close"}))
            self.assertEqual(seen.header("x-content-type-options"), "nosniff", path)
            self.assertEqual(seen.header("server"), "relay", path)
            self.assertIsNone(seen.header("strict-transport-security"), "not under plain HTTP")


async def edge_drops(edge: SecureEdge, limit: float) -> float | None:
    """When (time.monotonic) the edge held a connection and then none, within C{limit} s."""
    seen, deadline = False, time.monotonic() + limit
    while time.monotonic() < deadline:
        if edge.site.open:
            seen = True
        elif seen:
            return time.monotonic()
        await _sleep(0.05)
    return None


async def until(condition: Callable[[], bool], limit: float) -> None:
    """Wait for C{condition}, failing after C{limit} seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"not within {limit} s"
        await _sleep(0.05)


def _sleep(seconds: float) -> object:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


SLOW = """
[uploads]
header_timeout = 2
[web]
rate_window = 1.0
min_rate = 1024
max_connections_per_address = 20
max_connections = 30
"""


class SlowClientTests(TestCase):
    timeout = 120

    async def test_a_slowloris_is_dropped_at_the_header_deadline(self) -> None:
        edge = SecureEdge(self, SLOW)
        header = b"X-Trickle: " + b"a" * 200
        held = await deferToThread(held_for, edge.port, b"GET /healthz HTTP/1.1\r\n", header, 0.2, limit=10)
        # Each byte came well within any idle timeout; the deadline held.
        self.assertIsNotNone(held)
        assert held is not None
        self.assertLess(held, 3.5)
        self.assertGreater(held, 1.5)

    async def test_a_slow_body_is_dropped(self) -> None:
        edge = SecureEdge(self, SLOW)
        head = edge.request_head("POST", "/api/login", {"Content-Type": "application/json",
                                                        "Content-Length": "60000"})
        held = await deferToThread(held_for, edge.port, head, b"x" * 1000, 0.05, limit=10)
        assert held is not None
        self.assertLess(held, 4)

    async def test_a_slow_reader_is_dropped(self) -> None:
        # A header deadline too long to matter: only the rate can drop it.
        edge = SecureEdge(self, SLOW.replace("header_timeout = 2", "header_timeout = 30"))
        # Eight requests pipelined: more than the kernel's buffers hold.
        head = edge.request_head("GET", "/static/vendor/uppy.min.mjs") * 8
        # Measured at the edge: the client may go on reading what its
        # kernel already holds long after the edge has let go.
        started = time.monotonic()
        client = deferToThread(held_for, edge.port, head, b"", 0.2, limit=8, rcvbuf=4096, read=64)
        dropped = await edge_drops(edge, limit=10)
        await client
        self.assertIsNotNone(dropped)
        assert dropped is not None
        self.assertLess(dropped - started, 6)

    async def test_an_honest_slow_client_keeps_its_connection(self) -> None:
        edge = SecureEdge(self, SLOW)
        # 2 KiB/s in 300 ms bursts: over min_rate, under any idle timeout.
        body = json.dumps({"name": "alice", "password": "wrong", "pad": "x" * 8000}).encode()
        head = edge.request_head("POST", "/api/login", {"Content-Type": "application/json",
                                                        "Content-Length": str(len(body)),
                                                        "Connection": "close"})
        pieces = [body[i:i + 600] for i in range(0, len(body), 600)]

        def paced() -> Iterator[bytes]:
            for piece in pieces:
                time.sleep(0.3)
                yield piece

        seen = await edge.exchange(head, paced(), timeout=20)
        self.assertEqual(seen.status, 401, seen)

    async def test_connections_are_capped_per_address_and_in_all(self) -> None:
        edge = SecureEdge(self, SLOW)
        before = server_sockets(edge.port)
        sockets: list[socket.socket] = []

        def connect(source: str, n: int) -> None:
            for _ in range(n):
                s = socket.socket()
                s.bind((source, 0))
                s.connect(("127.0.0.1", edge.port))
                sockets.append(s)

        try:
            await deferToThread(connect, "127.0.0.1", 60)
            # The listener and at most 20 connections from 127.0.0.1 (the
            # others are accepted and closed at once).
            await until(lambda: edge.site.open == 20 and server_sockets(edge.port) - before <= 20, 5)
            for n in range(2, 5):
                await deferToThread(connect, f"127.0.0.{n}", 5)
            await until(lambda: edge.site.open == 30 and server_sockets(edge.port) - before <= 30, 5)
            # After the header deadline (2 s) nothing is held.
            await until(lambda: edge.site.open == 0 and server_sockets(edge.port) == before, 6)
        finally:
            for s in sockets:
                s.close()
        seen = await edge.exchange(edge.request_head("GET", "/healthz", {"Connection": "close"}))
        self.assertEqual(seen.status, 200)


class PipelineTests(TestCase):
    timeout = 60

    async def test_a_pipelined_long_request_outlives_the_header_deadline(self) -> None:
        edge = SecureEdge(self, "[uploads]\nheader_timeout = 1\n")

        def pipelined() -> tuple[bytes, bool]:
            s = socket.create_connection(("127.0.0.1", edge.port), timeout=5)
            try:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                          b"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + edge.key.encode()
                          + b"\r\n\r\n")
                time.sleep(2.5)
                s.setblocking(False)
                answer = s.recv(1 << 20)
                try:
                    still_open = s.recv(1) != b""
                except BlockingIOError:
                    still_open = True
                return answer, still_open
            finally:
                s.close()

        answer, still_open = await deferToThread(pipelined)
        self.assertEqual(answer.count(b"HTTP/1.1 200"), 2, answer[:400])
        self.assertIn(b"text/event-stream", answer)
        self.assertTrue(still_open, "the event stream was cut at the header deadline")
