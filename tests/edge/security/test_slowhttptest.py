"""
Debian's slowhttptest against a running edge, in its slow-headers (-H),
slow-body (-B) and slow-read (-X) modes with 1,000 connections for 60 s
each, while an honest client on another address keeps asking /healthz
(p99 under 200 ms) and uploads a file with tus; the edge's sockets stay
under its connection cap all along.  C{make test} installs slowhttptest.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.edge.security.world import SecureEdge, raw_exchange, server_sockets

SECONDS = int(os.environ.get("RELAY_SLOWHTTP_SECONDS", "60"))
CONFIG = """
[uploads]
header_timeout = 10
[web]
max_connections = 400
max_connections_per_address = 64
rate_window = 5.0
min_rate = 1024
"""
HONEST = "127.0.0.2"


def honest_client(port: int, key: str, stop: threading.Event, latencies: list[float], uploads: list[bool]) -> None:
    """/healthz every 100 ms, and a 256 KiB tus upload every 5 s, from 127.0.0.2."""
    last_upload = 0.0
    while not stop.is_set():
        started = time.monotonic()
        seen = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                            source=HONEST, timeout=5)
        latencies.append(time.monotonic() - started if seen.status is not None else float("inf"))
        if time.monotonic() - last_upload > 5:
            last_upload = time.monotonic()
            uploads.append(upload(port, key))
        time.sleep(0.1)


def upload(port: int, key: str) -> bool:
    data = secrets.token_bytes(256 * 1024)
    auth = f"Tus-Resumable: 1.0.0\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n"
    created = raw_exchange(port, (f"POST /files/ HTTP/1.1\r\nHost: x\r\n{auth}Upload-Length: {len(data)}\r\n"
                                  "Content-Length: 0\r\n\r\n").encode(), source=HONEST, timeout=10)
    location = created.header("location")
    if created.status != 201 or location is None:
        return False
    head = (f"PATCH {location} HTTP/1.1\r\nHost: x\r\n{auth}Upload-Offset: 0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    patched = raw_exchange(port, head, [data], source=HONEST, timeout=20)
    return patched.status == 204 and patched.header("upload-offset") == str(len(data))


class SlowHttpTestTests(TestCase):
    timeout = 4 * SECONDS + 120

    def setUp(self) -> None:
        if shutil.which("slowhttptest") is None:
            self.fail("slowhttptest is missing: make test installs it (Debian's slowhttptest package)")

    async def attack(self, mode: list[str], path: str) -> dict[str, Any]:
        edge = SecureEdge(self, CONFIG)
        await edge.uploads_ready()
        stop = threading.Event()
        latencies: list[float] = []
        uploads: list[bool] = []
        peak = [0]

        def sample() -> None:
            peak[0] = max(peak[0], server_sockets(edge.port))

        sampler = LoopingCall(sample)
        sampler.start(1.0)
        client = deferToThread(honest_client, edge.port, edge.key, stop, latencies, uploads)
        command = ["slowhttptest", *mode, "-c", "1000", "-r", "200", "-l", str(SECONDS), "-p", "3",
                   "-u", f"{edge.base}{path}"]
        result = await deferToThread(subprocess.run, command, capture_output=True, text=True,
                                     timeout=SECONDS + 60)
        stop.set()
        await client
        sampler.stop()
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        report = {"p99": p99, "requests": len(latencies), "uploads": uploads, "peak_sockets": peak[0],
                  "open_after": edge.site.open, "tail": result.stdout[-600:]}
        print(mode, {k: v for k, v in report.items() if k != "tail"})
        self.assertLess(p99, 0.2, report)
        self.assertTrue(uploads and all(uploads), report)
        # The listener and at most max_connections connections.
        self.assertLessEqual(peak[0], 400 + 1, report)
        return report

    async def test_slow_headers(self) -> None:
        await self.attack(["-H", "-i", "5"], "/healthz")

    async def test_slow_body(self) -> None:
        await self.attack(["-B", "-i", "5", "-s", "60000", "-t", "POST"], "/api/login")

    async def test_slow_read(self) -> None:
        await self.attack(["-X", "-k", "3", "-n", "5", "-w", "512", "-y", "1024", "-z", "32"],
                          "/static/vendor/uppy.min.mjs")


