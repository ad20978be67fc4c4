"""
Event streams are capped per user, against a running edge.
"""

from __future__ import annotations

import socket

from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.edge.security.world import SecureEdge


def open_stream(port: int, key: str) -> tuple[socket.socket, int]:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = s.recv(4096)
        if not data:
            break
        head += data
    return s, int(head.split(b" ", 2)[1])


class StreamCapTests(TestCase):
    timeout = 60

    async def test_a_user_may_hold_only_so_many_streams(self) -> None:
        edge = SecureEdge(self, "[web]\nmax_streams_per_user = 2\n")
        opened = []
        try:
            for expected in (200, 200, 429):
                s, status = await deferToThread(open_stream, edge.port, edge.key)
                opened.append(s)
                self.assertEqual(status, expected)
            opened[0].close()
            await edge._settle_streams(1)
            s, status = await deferToThread(open_stream, edge.port, edge.key)
            opened.append(s)
            self.assertEqual(status, 200, "a closed stream frees its place")
        finally:
            for s in opened:
                s.close()
