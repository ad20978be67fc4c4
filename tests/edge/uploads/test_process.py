"""
A real edge process (C{twistd -n relay-edge}, its user and API key seeded
in the replica as the cloud would send them): killed with SIGKILL mid-upload and restarted, it resumes the same upload URL and loses
no acknowledged byte; and random chunkings, interruptions and checksums
always give back the bytes that were sent.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import free_port

from .client import TusClient, seed_replica, start_edge, stored, wait_ready, write_config
from .harness import checksum


class EdgeProcess:
    def __init__(self, base: Path, twistd: list[str], env: dict[str, str]) -> None:
        self.data_dir = base / "edge"
        self.port = free_port()
        self.config = write_config(base / "edge.toml", self.port, self.data_dir,
                                   lock_stale_after=0.2, lock_wait=3)
        self.log = base / "edge.log"
        self.twistd, self.env = twistd, env
        key = seed_replica(self.data_dir)
        self.client = TusClient(f"http://127.0.0.1:{self.port}", key)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = start_edge(self.twistd, self.config, self.log, self.env)
        wait_ready(self.client, self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def edge(tmp_path: Path, twistd: list[str], clean_env: dict[str, str]) -> Iterator[EdgeProcess]:
    process = EdgeProcess(tmp_path, twistd, clean_env)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def shared_edge(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[EdgeProcess]:
    from tests.conftest import BIN

    env = dict(os.environ)
    env.pop("RELAY_CONFIG", None)
    process = EdgeProcess(tmp_path_factory.mktemp("shared-edge"),
                          [str(BIN / "twistd"), "-n", "--pidfile="], env)
    process.start()
    yield process
    process.stop()


def received(edge: EdgeProcess, url: str) -> int:
    """Bytes the edge holds for an upload now, including a body in flight."""
    reply = edge.client.request("GET", "/api/uploads/" + url.rsplit("/", 1)[1])
    import json

    return int(json.loads(reply.body)["offset"])


def test_kill_9_mid_upload_then_resume_with_the_same_url(edge: EdgeProcess) -> None:
    data = os.urandom(6 << 20)
    client = edge.client
    url = client.create(len(data))
    acknowledged = client.patch(url, 0, data[: 1 << 20])
    assert acknowledged.status == 204 and acknowledged.offset() == 1 << 20

    # A second PATCH is cut off by the kill while its body streams in.
    import socket

    head = (
        f"PATCH {url} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Authorization: Bearer {client.key}\r\nUpload-Offset: {1 << 20}\r\n"
        "Content-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {len(data) - (1 << 20)}\r\n\r\n"
    ).encode()
    sent_upto = (4 << 20) + 12345
    with socket.create_connection(("127.0.0.1", edge.port)) as s:
        s.sendall(head + data[1 << 20 : sent_upto])
        deadline = time.monotonic() + 20
        while received(edge, url) < sent_upto:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        edge.kill()

    edge.start()
    offset = client.head(url).offset()
    # Nothing acknowledged is lost; nothing that was not sent is claimed;
    # what was received unacknowledged is (mostly) kept.
    assert 1 << 20 <= offset <= sent_upto
    assert offset > sent_upto - (1 << 20)
    assert stored(edge.data_dir, url.rsplit("/", 1)[1]) == data[:offset]
    reply = client.patch(url, offset, data[offset:])
    assert reply.status == 204 and reply.offset() == len(data)
    got = stored(edge.data_dir, url.rsplit("/", 1)[1])
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()


steps = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=90_000),
        st.sampled_from(["plain", "cut", "sha1", "md5", "sha256", "bad"]),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=0, max_value=250_000), plan=steps, seed=st.binary(min_size=8, max_size=8))
def test_random_chunkings_interruptions_and_checksums(
    shared_edge: EdgeProcess, size: int, plan: list[tuple[int, str]], seed: bytes
) -> None:
    data = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    data = bytes(b ^ (i * 7 & 0xFF) for i, b in enumerate(data))
    client = shared_edge.client
    url = client.create(len(data))
    offset = 0
    step = 0
    while offset < len(data):
        if step < len(plan):
            chunk_size, mode = plan[step]
        else:  # after the plan, finish plainly, at most in a few requests
            chunk_size, mode = len(data), "plain"
            assert step < len(plan) + 20, "no progress"
        step += 1
        chunk = data[offset : offset + chunk_size]
        if mode == "cut":
            # Reset once the edge has the chunk: every byte of it must be kept.
            def arrived(at: int = offset + len(chunk)) -> None:
                deadline = time.monotonic() + 10
                while received(shared_edge, url) < at:
                    assert time.monotonic() < deadline, "the chunk did not arrive"
                    time.sleep(0.005)

            client.cut_patch(url, offset, len(data) - offset, chunk, arrived)
        else:
            headers = {}
            if mode in ("sha1", "md5", "sha256"):
                headers["Upload-Checksum"] = checksum(mode, chunk)
            elif mode == "bad":
                headers["Upload-Checksum"] = checksum("sha1", chunk + b"!")
            reply = client.patch(url, offset, chunk, **headers)
            if mode == "bad":
                assert reply.status == 460
            else:
                assert reply.status in (204, 409, 423), reply
                if reply.status == 204:
                    assert reply.offset() == offset + len(chunk)
        # Like a tus client: ask where the upload stands (a cut request may
        # still be finishing; it keeps every byte that arrived).
        deadline = time.monotonic() + 10
        while True:
            new = client.head(url).offset()
            if mode != "cut" or new == offset + len(chunk):
                break
            assert time.monotonic() < deadline, (offset, len(chunk), new)
            time.sleep(0.005)
        assert offset <= new <= len(data)
        offset = new
    assert client.head(url).offset() == len(data)
    assert stored(shared_edge.data_dir, url.rsplit("/", 1)[1]) == data
