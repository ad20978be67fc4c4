"""
Downloads in the browser: Debian's Chromium, driven by Playwright and
logged in at a real edge (the deployment of L{tests.test_browser}), gets a
file's content URL through the link emulator (C{python -m
relay.testing.linkemu}, a process of its own) in front of the edge.

Chromium does not resume a download that a reset cut: the download ends
at once as C{canceled} (Playwright's C{Download.failure()}), no new
connection comes, and neither Playwright nor the DevTools protocol offers
a resume (chrome://downloads' button is a user's action).  So the cut-free
download is Chromium's own, and the resumption after cuts is the page's:
C{fetch} with the session cookie reads the body as it streams and, after
each cut, asks for the rest with C{Range} and C{If-Range} on the strong
ETag, as a download manager in the page would.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from relay.testing.s3servers import free_port
from relay.testing.transfer_world import read_db, stage_upload

from .test_browser import PASSWORD, Deployment, deployment, log_in, page  # noqa: F401

SIZE = 24 << 20
#: The emulator's per-connection rate: the download takes about 6 s.
RATE_BYTES = 4 << 20


class Cutter:
    """The link emulator as a process in front of the edge; SIGUSR1 resets every connection."""

    def __init__(self, upstream_port: int, log: Path, *more: str) -> None:
        self.port = free_port()
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.testing.linkemu", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--connect", f"tcp:127.0.0.1:{upstream_port}", "--rate-kbps", str(RATE_BYTES * 8 / 1000),
             "--stats-interval-s", "0.1", *more],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )

    def counter(self, name: str) -> int:
        """The latest value of one of the emulator's counters, from its log."""
        found = re.findall(rf"{name}=(\d+)", self.log.read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def reaches(self, name: str, value: int, within: float = 5.0) -> bool:
        """Whether the counter reaches C{value} within C{within} s (the log lags by a stats interval)."""
        deadline = time.monotonic() + within
        while self.counter(name) < value:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def wait_listening(self) -> None:
        deadline = time.monotonic() + 20
        while "linkemu" not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def stored_file(deployment: Deployment, tmp_path: Path) -> tuple[str, str]:  # noqa: F811
    """A file of alice's, uploaded at this edge, stored in S3 and in the edge's cache: (id, sha256)."""
    cloud_db = tmp_path / "cloud" / "cloud.db"
    [user] = read_db(cloud_db, "SELECT id FROM users WHERE name = 'alice'")
    [project] = read_db(cloud_db, "SELECT id FROM projects WHERE owner_id = ? AND is_default = 1", (user["id"],))
    # Staged as the tus receiver leaves an upload; the edge transfers it when it starts.
    deployment.edge.stop()
    file_id, sha256 = stage_upload(tmp_path / "edge", SIZE, seed=5, owner=user["id"], project=project["id"],
                                   filename="Turbine blade, rev. 2 (Zürich).step")
    deployment.edge.start()
    deadline = time.monotonic() + 90
    while not read_db_safe(tmp_path / "edge" / "edge.db", file_id):
        assert deployment.edge.alive, deployment.edge.log_text()[-3000:]
        assert time.monotonic() < deadline, "the file never reached the edge's cache and replica"
        time.sleep(0.2)
    return file_id, sha256


def read_db_safe(db: Path, file_id: str) -> bool:
    try:
        rows = read_db(db, "SELECT state FROM cache_files WHERE file_id = ?", (file_id,))
        listed = read_db(db, "SELECT 1 FROM replica_files WHERE id = ?", (file_id,))
    except Exception:
        return False
    return [r["state"] for r in rows] == ["cached"] and bool(listed)


@pytest.fixture
def emulated(deployment: Deployment, tmp_path: Path) -> Iterator[Cutter]:  # noqa: F811
    """A clean, rate-limited link in front of the edge: the download takes about 6 s."""
    cutter = Cutter(int(deployment.edge_url.rsplit(":", 1)[1]), tmp_path / "linkemu-clean.log")
    try:
        cutter.wait_listening()
        yield cutter
    finally:
        cutter.stop()


@pytest.fixture
def cutting(deployment: Deployment, tmp_path: Path) -> Iterator[Cutter]:  # noqa: F811
    """The same, resetting each connection after 1.5 s on average (seeded)."""
    cutter = Cutter(int(deployment.edge_url.rsplit(":", 1)[1]), tmp_path / "linkemu-cutting.log",
                    "--reset-mean-s", "1.5", "--seed", "12")
    try:
        cutter.wait_listening()
        yield cutter
    finally:
        cutter.stop()


def test_chromium_downloads_a_file_through_the_emulated_link(
    deployment: Deployment,  # noqa: F811
    page: Page,  # noqa: F811
    stored_file: tuple[str, str],
    emulated: Cutter,
    tmp_path: Path,
) -> None:
    file_id, sha256 = stored_file
    log_in(page, deployment.edge_url, PASSWORD)
    page.wait_for_selector("#workspace", state="visible")
    # The session cookie is the host's (ports do not separate cookies, and
    # the two ports are one site): the link through the emulator carries it.
    url = f"http://127.0.0.1:{emulated.port}/api/v1/files/{file_id}/content"
    page.evaluate(
        "url => { const a = document.createElement('a'); a.id = 'dl'; a.href = url;"
        " a.textContent = 'download'; document.body.append(a); }", url,
    )
    with page.expect_download(timeout=30_000) as started:
        page.click("#dl")
    download = started.value
    assert download.suggested_filename == "Turbine blade, rev. 2 (Zürich).step"
    saved = tmp_path / "saved.step"
    download.save_as(saved)
    assert download.failure() is None
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == sha256
    assert emulated.reaches("bytes_to_client", SIZE), emulated.counter("bytes_to_client")  # it came that way


#: The page's resuming download: read the body as it streams; after a cut,
#: ask for the rest with Range and If-Range (the ETag of the first answer).
RESUMING_FETCH = """
async ({url, size}) => {
  const parts = [], statuses = [];
  let got = 0, etag = null, cuts = 0;
  while (got < size && statuses.length + cuts < 200) {
    const headers = got ? {'Range': `bytes=${got}-`, 'If-Range': etag} : {};
    let response;
    try {
      response = await fetch(url, {headers, credentials: 'same-origin', cache: 'no-store'});
    } catch (e) { cuts++; await new Promise(r => setTimeout(r, 50)); continue; }
    statuses.push(response.status);
    if (got ? response.status !== 206 : response.status !== 200) return {error: 'status', statuses};
    if (got && response.headers.get('Content-Range') !== `bytes ${got}-${size - 1}/${size}`)
      return {error: 'content-range ' + response.headers.get('Content-Range'), statuses};
    if (!got) etag = response.headers.get('ETag');
    const reader = response.body.getReader();
    try {
      for (;;) {
        const {done, value} = await reader.read();
        if (done) break;
        parts.push(value);
        got += value.length;
      }
    } catch (e) { cuts++; }
  }
  const whole = new Uint8Array(got);
  let at = 0;
  for (const part of parts) { whole.set(part, at); at += part.length; }
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', whole));
  return {got, statuses, cuts, etag, sha256: Array.from(digest, b => b.toString(16).padStart(2, '0')).join('')};
}
"""


def test_the_browser_resumes_a_cut_download_with_range(
    deployment: Deployment,  # noqa: F811
    page: Page,  # noqa: F811
    stored_file: tuple[str, str],
    cutting: Cutter,
) -> None:
    file_id, sha256 = stored_file
    log_in(page, deployment.edge_url, PASSWORD)
    page.wait_for_selector("#workspace", state="visible")
    base = f"http://127.0.0.1:{cutting.port}"
    path = f"/api/v1/files/{file_id}/content"
    # The page at the emulator's origin (its fetches are then same-origin);
    # a reset may cut this small answer too.
    for _ in range(10):
        try:
            page.goto(base + "/api/me")
            break
        except Exception:
            continue
    outcome = page.evaluate(RESUMING_FETCH, {"url": base + path, "size": SIZE})
    print("resuming fetch:", outcome)
    assert "error" not in outcome, outcome
    assert outcome["etag"] == f'"{sha256}"'
    assert outcome["got"] == SIZE
    assert outcome["sha256"] == sha256
    # The link cut it, and every later answer was the rest (206), never the whole again.
    assert outcome["cuts"] >= 1 and cutting.counter("resets_injected") >= 1, outcome
    assert outcome["statuses"][0] == 200 and set(outcome["statuses"][1:]) == {206}, outcome
    assert cutting.reaches("bytes_to_client", SIZE)
    assert cutting.counter("bytes_to_client") < SIZE + (4 << 20)
    # The browser context's own requests (the session's cookie), on the edge directly:
    # a range, and If-Range with an old ETag (the whole file, 200).
    answer = page.request.get(deployment.edge_url + path, headers={"Range": "bytes=1000-1999",
                                                                    "If-Range": f'"{sha256}"'})
    assert (answer.status, answer.headers["content-range"]) == (206, f"bytes 1000-1999/{SIZE}")
    assert hashlib.sha256(answer.body()).hexdigest() == hashlib.sha256(
        _pattern_bytes(SIZE)[1000:2000]).hexdigest()
    stale = page.request.get(deployment.edge_url + path, headers={"Range": "bytes=1000-1999",
                                                                   "If-Range": '"' + "0" * 64 + '"'})
    assert stale.status == 200 and len(stale.body()) == SIZE
    assert hashlib.sha256(stale.body()).hexdigest() == sha256


def _pattern_bytes(size: int) -> bytes:
    from relay.testing.transfer_world import pattern

    return b"".join(pattern(5, size))
