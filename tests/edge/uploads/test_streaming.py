"""
Streaming: bodies go to the spool as they arrive, with bounded memory,
survive dropped connections, time out when stalled, one writer at a time,
and never reach the disk in plaintext.  Raw HTTP connections in memory,
on the test reactor: time passes only where a test says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from relay.testing.reactor import InlineThreadPool, TestReactor
from relay.tus import streaming as request_module

from .harness import CONFIG, KEY, Edge, random_bytes
from .test_http import EdgeTestCase


class RawClient(Protocol):
    """Writes what it is told, collects what comes back."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)

    def responses(self) -> list[bytes]:
        return [r for r in self.received.split(b"HTTP/1.1 ")[1:]]


async def connect(edge: Edge) -> RawClient:
    client = RawClient()
    edge.connect(client)

    async def close() -> None:
        if not client.closed.called:
            client.transport.abortConnection()
            edge.settle()

    edge.cleanups.append(close)
    return client


def patch_head(url: str, offset: int, length: int, key: str = KEY, close: bool = False) -> bytes:
    lines = [
        f"PATCH {url} HTTP/1.1", "Host: 127.0.0.1", "Tus-Resumable: 1.0.0",
        f"Authorization: Bearer {key}", f"Upload-Offset: {offset}",
        "Content-Type: application/offset+octet-stream", f"Content-Length: {length}",
    ]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def patch_headers(offset: int) -> dict[str, str]:
    return {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {KEY}", "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream"}


def until(edge: Edge, predicate: Callable[[], bool]) -> None:
    """
    Let what can happen now happen; then C{predicate} must hold.
    """
    edge.settle()
    assert predicate(), "not so once everything that could happen did"


def lease_offset(edge: Edge, url: str) -> int:
    lease = edge.service.locks.holder(url.rsplit("/", 1)[1])
    return -1 if lease is None or lease.offset is None else lease.offset


def drop(edge: Edge, client: RawClient) -> None:
    """
    The client's connection breaks (as a reset would end it).
    """
    client.transport.abortConnection()
    edge.settle()
    assert client.closed.called


class LaggingPool(InlineThreadPool):
    """
    A pool whose every piece of work starts C{lag} seconds after it is
    handed over: a disk slower than the network.
    """

    def __init__(self, reactor: TestReactor, lag: float) -> None:
        self._reactor = reactor
        self._lag = lag
        self.handed = 0

    def callInThreadWithCallback(self, onResult: Any, fn: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802, N803
        self.handed += 1
        self._reactor.callLater(self._lag, super().callInThreadWithCallback, onResult, fn, *args, **kwargs)


class DroppedConnectionTests(EdgeTestCase):
    async def test_every_byte_that_arrived_is_kept(self) -> None:
        edge = await self.edge()
        data = random_bytes(3_000_000)
        url = await edge.create(len(data))
        client = await connect(edge)
        sent = 1_234_567
        client.transport.write(patch_head(url, 0, len(data)) + data[:sent])
        until(edge, lambda: lease_offset(edge, url) == sent)
        drop(edge, client)
        until(edge, lambda: edge.service.locks.holder(url.rsplit("/", 1)[1]) is None)
        r = await edge.head(url)
        self.assertEqual(r.header("Upload-Offset"), str(sent))
        self.assertEqual(edge.stored(url), data[:sent])
        r = await edge.patch(url, sent, data[sent:])
        self.assertEqual(r.code, 204)
        self.assertEqual(edge.stored(url), data)

    async def test_keep_alive_after_a_streamed_body(self) -> None:
        edge = await self.edge()
        url = await edge.create(6)
        client = await connect(edge)
        client.transport.write(patch_head(url, 0, 3) + b"abc" + patch_head(url, 3, 3) + b"def")
        until(edge, lambda: client.received.count(b"HTTP/1.1 204") == 2)
        self.assertIn(b"Upload-Offset: 6", client.received)
        client.transport.loseConnection()
        self.assertEqual(edge.stored(url), b"abcdef")


    async def test_chunked_body(self) -> None:
        edge = await self.edge()
        url = await edge.create(None)
        client = await connect(edge)
        head = patch_head(url, 0, 0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")
        client.transport.write(head + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        until(edge, lambda: b"204" in client.received)
        self.assertIn(b"Upload-Offset: 11", client.received)
        self.assertEqual(edge.stored(url), b"hello world")

    async def test_expect_100_continue(self) -> None:
        edge = await self.edge()
        url = await edge.create(4)
        client = await connect(edge)
        client.transport.write(patch_head(url, 0, 4)[:-2] + b"Expect: 100-continue\r\n\r\n")
        until(edge, lambda: b"100 Continue" in client.received)
        client.transport.write(b"abcd")
        until(edge, lambda: b"204" in client.received)
        self.assertEqual(edge.stored(url), b"abcd")

    async def test_refusal_is_sent_at_once_and_the_connection_stays_usable(self) -> None:
        edge = await self.edge()
        url = await edge.create(3_000_010)
        client = await connect(edge)
        client.transport.write(patch_head(url, 7, 3_000_000) + b"x" * 100_000)
        until(edge, lambda: b"409" in client.received)
        self.assertIn(b"Upload-Offset: 0", client.received)
        client.transport.write(b"x" * 2_900_000 + patch_head(url, 0, 10) + b"0123456789")
        until(edge, lambda: b"204" in client.received)
        self.assertEqual(edge.stored(url), b"0123456789")


class BackpressureTests(EdgeTestCase):
    async def test_memory_stays_bounded_when_the_disk_lags(self) -> None:
        # Each read of the body takes 1 ms, each spool write starts 10 ms
        # after it is handed over: unless the receiver pauses the
        # connection, the body piles up in memory.
        pools: list[LaggingPool] = []

        def lagging(reactor: TestReactor) -> LaggingPool:
            pools.append(LaggingPool(reactor, 0.01))
            return pools[-1]

        edge = await self.edge(pool=lagging, tick=0.001)
        peak = [0]
        deliver = request_module.RequestBody.deliver

        def spy(body: request_module.RequestBody, data: bytes) -> None:
            deliver(body, data)
            peak[0] = max(peak[0], body._buffered)

        self.patch(request_module.RequestBody, "deliver", spy)
        data = random_bytes(12 << 20)
        url = await edge.create(len(data))
        r = await edge.patch(url, 0, data)
        self.assertEqual(r.code, 204)
        # One read (read_size) may overshoot high_water, no more.
        settings = request_module.StreamingSettings
        self.assertLessEqual(peak[0], settings.high_water + settings.read_size)
        self.assertGreater(peak[0], 0)
        self.assertGreater(pools[0].handed, 12)  # the disk did lag behind, batch after batch
        self.assertEqual(edge.stored(url), data)


class TimeoutTests(EdgeTestCase):
    async def test_stalled_body_times_out_keeps_bytes_and_frees_the_upload(self) -> None:
        edge = await self.edge(replace(CONFIG, body_timeout=5))
        url = await edge.create(100)
        client = await connect(edge)
        client.transport.write(patch_head(url, 0, 100) + b"x" * 40)
        edge.advance(4.9)
        self.assertFalse(client.closed.called)
        edge.advance(0.2)
        self.assertTrue(client.closed.called)
        until(edge, lambda: edge.service.locks.holder(url.rsplit("/", 1)[1]) is None)
        self.assertEqual((await edge.head(url)).header("Upload-Offset"), "40")
        self.assertEqual((await edge.patch(url, 40, b"y" * 60)).code, 204)

    async def test_stalled_headers_time_out(self) -> None:
        edge = await self.edge(replace(CONFIG, header_timeout=5))
        client = await connect(edge)
        client.transport.write(b"PATCH /files/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        edge.advance(4.9)
        self.assertFalse(client.closed.called)
        edge.advance(0.2)
        self.assertTrue(client.closed.called)


class OneWriterTests(EdgeTestCase):
    config = replace(CONFIG, lock_stale_after=0.5, lock_wait=0.3)

    async def test_live_writer_keeps_the_upload_423(self) -> None:
        edge = await self.edge()
        url = await edge.create(1000)
        first = await connect(edge)
        first.transport.write(patch_head(url, 0, 1000) + b"a" * 100)
        until(edge, lambda: lease_offset(edge, url) == 100)
        second = edge.begin("PATCH", url, patch_headers(0), b"b" * 10)
        edge.advance(0.29)
        self.assertFalse(second.called)  # it waits lock_wait for the writer
        edge.advance(0.02)
        r = await edge.fired(second)
        self.assertEqual(r.code, 423)
        first.transport.write(b"a" * 900)
        until(edge, lambda: b"204" in first.received)
        self.assertEqual(edge.stored(url), b"a" * 1000)

    async def test_stale_writer_is_taken_over(self) -> None:
        edge = await self.edge()
        url = await edge.create(1000)
        first = await connect(edge)
        first.transport.write(patch_head(url, 0, 1000) + b"a" * 100)
        until(edge, lambda: lease_offset(edge, url) == 100)
        edge.advance(0.6)  # the first connection goes quiet (a dead link)
        # The client resumes from what it last heard (0): the takeover
        # aborts the old request, keeps its 100 bytes, and the offsets
        # then disagree (409), as tus clients expect after a takeover.
        r = await edge.patch(url, 0, b"b" * 10)
        self.assertEqual((r.code, r.header("Upload-Offset")), (409, "100"))
        self.assertTrue(first.closed.called)
        r = await edge.patch(url, 100, b"b" * 900)
        self.assertEqual(r.code, 204)
        self.assertEqual(edge.stored(url), b"a" * 100 + b"b" * 900)


class PlaintextTests(EdgeTestCase):
    async def test_spool_never_holds_plaintext(self) -> None:
        edge = await self.edge()
        pattern = b"RELAY-PLAINTEXT-MARKER-0123456789"
        data = pattern * 40_000
        url = await edge.create(len(data))
        client = await connect(edge)
        half = len(data) // 2 + 7
        client.transport.write(patch_head(url, 0, len(data)) + data[:half])
        until(edge, lambda: lease_offset(edge, url) == half)

        def grep() -> list[Path]:
            hits = []
            for path in Path(edge.spool.directory).rglob("*"):
                content = path.read_bytes()
                if pattern[:16] in content or pattern[-16:] in content:
                    hits.append(path)
            return hits

        self.assertTrue(list(Path(edge.spool.directory).iterdir()))
        self.assertEqual(grep(), [])  # while receiving
        client.transport.write(data[half:])
        until(edge, lambda: b"204" in client.received)
        self.assertEqual(grep(), [])  # complete
        self.assertEqual(edge.stored(url), data)  # and it does decrypt
        # The test can fail: the same grep finds a plaintext file.
        (Path(edge.spool.directory) / "canary").write_bytes(pattern)
        self.assertEqual(len(grep()), 1)
