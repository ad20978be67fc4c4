"""
Uploads in the browser that survive the page: a reload, and a browser
closed and opened again, in the middle of an upload (Uppy's Golden
Retriever keeps the file in IndexedDB, tus-js-client the upload's URL):
the upload goes on from the offset the edge holds, and the bytes already
there are not sent again.

The page talks to the edge through the link emulator at 20 MiB/s a
connection (a process of its own, so what crossed it can be counted): the
issue's 200 MiB take about 10 s.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright

from .browser_world import CHROMIUM, PASSWORDS, Throttle, World, shoot, world  # noqa: F401

SIZE = 200 << 20
RATE = 20 << 20


@pytest.fixture
def throttle(world: World, tmp_path: Path) -> Iterator[Throttle]:  # noqa: F811
    emulator = Throttle(world.edge_url, tmp_path / "linkemu-web.log", RATE)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def slow_throttle(world: World, tmp_path: Path) -> Iterator[Throttle]:  # noqa: F811
    """
    A link slow enough (6 MiB/s) that an upload is still going when a
    person's click arrives, however loaded the machine.
    """
    emulator = Throttle(world.edge_url, tmp_path / "linkemu-slow.log", 6 << 20)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


def open_browser(playwright: Playwright, profile: Path) -> tuple[BrowserContext, Page]:
    """Chromium with a profile on disk: closing it and opening it again is a browser restart."""
    context = playwright.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, args=["--no-sandbox"])
    page = context.pages[0] if context.pages else context.new_page()
    page.on("console", lambda m: print("console:", m.type, m.text) if m.type != "debug" else None)
    page.on("pageerror", lambda e: print("pageerror:", e))
    return context, page


def edge_offset(deployed: World) -> int:
    rows = deployed.edge_db("SELECT \"offset\" FROM uploads")
    return int(rows[0]["offset"]) if rows else 0


def sign_in(page: Page, base: str) -> None:
    """Alice logs in on the page at C{base} (the throttled edge), without waiting for what follows."""
    page.goto(base + "/")
    page.fill("#login-form input[name=name]", "alice")
    page.fill("#login-form input[name=password]", PASSWORDS["alice"])
    page.click("#login-form button[type=submit]")


def wait_for_offset(deployed: World, at_least: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while (offset := edge_offset(deployed)) < at_least:
        assert time.monotonic() < deadline, f"the upload is at {offset}"
        time.sleep(0.1)
    return offset


def test_a_reload_and_a_browser_restart_mid_upload_resume_it(
    world: World, throttle: Throttle, playwright: Playwright, tmp_path: Path  # noqa: F811
) -> None:
    content = os.urandom(SIZE)
    big = tmp_path / "big.bin"
    big.write_bytes(content)
    base = f"http://127.0.0.1:{throttle.port}"
    context, page = open_browser(playwright, tmp_path / "profile")
    sign_in(page, base)
    page.locator("#nav-projects a").first.click()
    page.locator("#dashboard input[type=file]").first.set_input_files(str(big))
    page.click(".uppy-StatusBar-actionBtn--upload")
    expect(page.locator("#upload-progress li[data-file='big.bin']")).to_be_visible(timeout=10_000)
    expect(page.locator("#upload-total")).to_contain_text("left", timeout=10_000)
    shoot(page, "upload-in-progress")

    # A reload a quarter of the way: the page comes back and carries on.
    before_reload = wait_for_offset(world, SIZE // 4)
    page.reload()
    expect(page.locator("#workspace")).to_be_visible()
    page.locator("#nav-projects a").first.click()
    assert page.evaluate("window.relayUploads.ghosts") == []
    after_reload = wait_for_offset(world, before_reload + (4 << 20))

    # The browser closed at half way, and opened again.
    before_restart = wait_for_offset(world, max(SIZE // 2, after_reload))
    context.close()
    context, page = open_browser(playwright, tmp_path / "profile")
    page.goto(base + "/")
    expect(page.locator("#workspace")).to_be_visible()
    page.locator("#nav-projects a").first.click()
    expect(page.locator("#files tbody tr", has_text="big.bin")).to_have_attribute(
        "data-state", re.compile("staged|transferring|in_cloud"), timeout=45_000)
    expect(page.locator("#files tbody tr a.download", has_text="Download")).to_have_count(1, timeout=30_000)
    shoot(page, "upload-resumed")
    context.close()

    # One upload, whole and right; what crossed the link is the file once,
    # plus at most what was in flight at each interruption.
    uploads = world.edge_db("SELECT id, \"offset\", length FROM uploads")
    assert len(uploads) == 1 and uploads[0]["offset"] == SIZE
    [stored] = world.cloud_db("SELECT sha256 FROM files WHERE name = 'big.bin'")
    assert stored["sha256"] == hashlib.sha256(content).hexdigest()
    sent = throttle.to_edge()
    print(f"sent {sent} bytes for {SIZE}; reload at {before_reload}, restart at {before_restart}")
    assert sent < SIZE + 2 * (16 << 20) + (1 << 20), sent


def test_a_stalled_upload_is_aborted_and_resumed_from_the_edges_offset(
    world: World, throttle: Throttle, playwright: Playwright, tmp_path: Path  # noqa: F811
) -> None:
    """
    The link in front of the edge stops carrying bytes with the connection
    open (a stall): no error comes, and tus-js-client alone would wait. The
    page's detector (its threshold 3 s here instead of 30 s, through
    localStorage) aborts, and once the link carries again the upload goes
    on from the offset the edge holds.
    """
    size = 96 << 20
    content = os.urandom(size)
    (tmp_path / "stalled.bin").write_bytes(content)
    base = f"http://127.0.0.1:{throttle.port}"
    context, page = open_browser(playwright, tmp_path / "profile")
    context.add_init_script("localStorage.setItem('relay.stall_ms', '3000')")
    sign_in(page, base)
    page.locator("#nav-projects a").first.click()
    page.locator("#dashboard input[type=file]").first.set_input_files(str(tmp_path / "stalled.bin"))
    page.click(".uppy-StatusBar-actionBtn--upload")
    wait_for_offset(world, 16 << 20)
    throttle.process.send_signal(signal.SIGUSR2)  # the link stalls
    try:
        deadline = time.monotonic() + 20
        while page.evaluate("window.relayUploads.stalls") < 1:
            assert time.monotonic() < deadline, "the stall was never noticed"
            time.sleep(0.2)
        offset_in_stall = edge_offset(world)
    finally:
        throttle.process.send_signal(signal.SIGUSR2)  # and carries again
    expect(page.locator("#files tbody tr", has_text="stalled.bin")).to_have_attribute(
        "data-state", re.compile("staged|transferring|in_cloud"), timeout=40_000)
    context.close()
    assert offset_in_stall < size
    [upload] = world.edge_db("SELECT \"offset\" FROM uploads WHERE filename = 'stalled.bin'")
    assert upload["offset"] == size
    deadline = time.monotonic() + 30
    while not (stored := world.cloud_db("SELECT sha256 FROM files WHERE name = 'stalled.bin'")):
        assert time.monotonic() < deadline, "never reached the cloud"
        time.sleep(0.2)
    assert stored[0]["sha256"] == hashlib.sha256(content).hexdigest()
    assert throttle.to_edge() < size + (16 << 20) + (1 << 20)


CLEAR_BLOBS = """() => new Promise((resolve, reject) => {
  const opened = indexedDB.open('uppy-blobs');
  opened.onsuccess = () => {
    const done = opened.result.transaction('files', 'readwrite').objectStore('files').clear();
    done.onsuccess = () => resolve(true);
    done.onerror = () => reject(done.error);
  };
  opened.onerror = () => reject(opened.error);
})"""


def test_a_file_that_cannot_be_restored_is_named_and_resumes_when_added_again(
    world: World, throttle: Throttle, playwright: Playwright, tmp_path: Path  # noqa: F811
) -> None:
    """
    The browser lost Golden Retriever's copy of the file (storage cleared)
    before a reload: the page names the file instead of dropping it in
    silence; added again, it goes on from the edge's offset.
    """
    size = 96 << 20
    content = os.urandom(size)
    lost = tmp_path / "lost.bin"
    lost.write_bytes(content)
    base = f"http://127.0.0.1:{throttle.port}"
    context, page = open_browser(playwright, tmp_path / "profile")
    sign_in(page, base)
    page.locator("#nav-projects a").first.click()
    page.locator("#dashboard input[type=file]").first.set_input_files(str(lost))
    page.click(".uppy-StatusBar-actionBtn--upload")
    at_reload = wait_for_offset(world, 16 << 20)
    assert page.evaluate(CLEAR_BLOBS) is True
    page.reload()
    page.locator("#nav-projects a").first.click()
    ghosts = page.locator("#upload-ghosts")
    expect(ghosts).to_contain_text("could not be restored", timeout=10_000)
    expect(ghosts).to_contain_text("lost.bin")
    shoot(page, "upload-not-restored")
    # As a person would: "Add more", then the same file.
    page.click("#dashboard .uppy-DashboardContent-addMore")
    page.locator("#dashboard input[type=file]").first.set_input_files(str(lost))
    upload = page.locator(".uppy-StatusBar-actionBtn--upload")
    if upload.count():
        upload.click()
    expect(ghosts).to_be_empty(timeout=10_000)
    expect(page.locator("#files tbody tr", has_text="lost.bin")).to_have_attribute(
        "data-state", re.compile("staged|transferring|in_cloud"), timeout=40_000)
    context.close()
    [row] = world.edge_db("SELECT \"offset\" FROM uploads WHERE filename = 'lost.bin'")
    assert row["offset"] == size
    sent = throttle.to_edge()
    print(f"sent {sent} for {size}, {at_reload} at the edge at the reload")
    assert sent < size + (16 << 20) + (1 << 20), sent


def test_an_upload_paused_and_resumed_by_its_button(
    world: World, slow_throttle: Throttle, playwright: Playwright, tmp_path: Path  # noqa: F811
) -> None:
    # At 6 MiB/s the upload has 8 s to go when the pause is clicked (at
    # 20 MiB/s a loaded machine's click once came after its last byte).
    throttle = slow_throttle
    size = 64 << 20
    content = os.urandom(size)
    (tmp_path / "paused.bin").write_bytes(content)
    context, page = open_browser(playwright, tmp_path / "profile")
    sign_in(page, f"http://127.0.0.1:{throttle.port}")
    page.locator("#nav-projects a").first.click()
    page.locator("#dashboard input[type=file]").first.set_input_files(str(tmp_path / "paused.bin"))
    page.click(".uppy-StatusBar-actionBtn--upload")
    wait_for_offset(world, 16 << 20)
    item = page.locator("#upload-progress li[data-file='paused.bin']")
    item.locator("button", has_text="Pause").click()
    expect(item).to_have_attribute("data-state", "paused")
    # What was in flight (in the sockets' buffers, the emulator's queue)
    # still lands: until no byte went to the edge for a second.
    sent, still_since, deadline = throttle.to_edge(), time.monotonic(), time.monotonic() + 20
    while time.monotonic() - still_since < 1.0:
        assert time.monotonic() < deadline, "bytes kept going to the edge after the pause"
        time.sleep(0.1)
        if (now := throttle.to_edge()) != sent:
            sent, still_since = now, time.monotonic()
    held = edge_offset(world)
    time.sleep(2.0)
    assert edge_offset(world) == held and throttle.to_edge() - sent < (1 << 20), "paused, yet it went on"
    assert held < size
    item.locator("button", has_text="Resume").click()
    expect(page.locator("#files tbody tr", has_text="paused.bin")).to_have_attribute(
        "data-state", re.compile("staged|transferring|in_cloud"), timeout=40_000)
    context.close()
    assert edge_offset(world) == size


def test_an_upload_outlives_an_edge_restart_and_the_page_says_the_edge_is_away(
    world: World, throttle: Throttle, playwright: Playwright, tmp_path: Path  # noqa: F811
) -> None:
    size = 96 << 20
    content = os.urandom(size)
    (tmp_path / "restart.bin").write_bytes(content)
    context, page = open_browser(playwright, tmp_path / "profile")
    sign_in(page, f"http://127.0.0.1:{throttle.port}")
    page.locator("#nav-projects a").first.click()
    page.locator("#dashboard input[type=file]").first.set_input_files(str(tmp_path / "restart.bin"))
    page.click(".uppy-StatusBar-actionBtn--upload")
    wait_for_offset(world, 16 << 20)
    world.edge.stop()
    try:
        expect(page.locator("#statusbar")).to_have_attribute("data-link", "edge", timeout=15_000)
        expect(page.locator("#statusbar")).to_contain_text("This browser cannot reach the edge")
        shoot(page, "edge-unreachable")
        time.sleep(3)
    finally:
        world.edge.start()
    expect(page.locator("#statusbar")).to_have_attribute("data-link", "up", timeout=30_000)
    expect(page.locator("#files tbody tr", has_text="restart.bin")).to_have_attribute(
        "data-state", re.compile("staged|transferring|in_cloud"), timeout=60_000)
    context.close()
    assert edge_offset(world) == size
    deadline = time.monotonic() + 30
    while not (stored := world.cloud_db("SELECT sha256 FROM files WHERE name = 'restart.bin'")):
        assert time.monotonic() < deadline, "never reached the cloud"
        time.sleep(0.2)
    assert stored[0]["sha256"] == hashlib.sha256(content).hexdigest()


#: Run in every page before its scripts: when it first drew a page's data
#: (the rows of the project list or of a project's members), by its clock.
DRAWN = """
window.relayDrawnAt = null;
const look = () => {
  if (document.querySelector('#projects tbody tr[data-project], #members tbody tr')) window.relayDrawnAt = performance.now();
  else requestAnimationFrame(look);
};
requestAnimationFrame(look);
"""

#: When the page asked for Uppy's bundle and style (ms by its clock), if it has.
ASKED = """() => ['vendor/uppy.min.mjs', 'vendor/uppy.min.css'].map((name) =>
  performance.getEntriesByType('resource').find((r) => r.name.endsWith(name))?.startTime ?? null)"""


def test_uppy_waits_for_the_page_unless_an_upload_is_to_resume(
    world: World, throttle: Throttle, playwright: Playwright, tmp_path: Path  # noqa: F811
) -> None:
    size = 96 << 20
    content = os.urandom(size)
    (tmp_path / "later.bin").write_bytes(content)
    base = f"http://127.0.0.1:{throttle.port}"
    context, page = open_browser(playwright, tmp_path / "profile")
    context.add_init_script(DRAWN)

    def loaded_after_the_data(route: str) -> list[float]:
        """A full page load of C{route}: when Uppy was asked for, in ms after the data was drawn."""
        page.goto("about:blank")
        page.goto(base + route)
        page.wait_for_function("() => window.relayUploads?.loaded && window.relayDrawnAt !== null")
        drawn = page.evaluate("window.relayDrawnAt")
        asked = page.evaluate(ASKED)
        assert None not in asked, asked
        return [at - drawn for at in asked]

    sign_in(page, base)
    expect(page.locator("#projects tbody tr[data-project]").first).to_be_visible()
    # Nothing to resume: the bundle and its style are asked for after the
    # page has drawn its data, on the project list and on a project.
    assert all(after > 0 for after in loaded_after_the_data("/#/projects"))
    project = page.locator("#projects tbody tr[data-project]").first.get_attribute("data-project")
    assert all(after > 0 for after in loaded_after_the_data(f"/#/projects/{project}"))
    assert page.evaluate("localStorage.getItem('relay.uploads_unfinished')") is None

    page.locator("#dashboard input[type=file]").first.set_input_files(str(tmp_path / "later.bin"))
    page.click(".uppy-StatusBar-actionBtn--upload")
    at_reload = wait_for_offset(world, 16 << 20)
    assert page.evaluate("localStorage.getItem('relay.uploads_unfinished')") == "1"
    # A reload onto the project list mid-upload: Uppy is asked for at once,
    # before the data is drawn, and Golden Retriever resumes the upload
    # there (no upload area on the page).
    assert all(after < 0 for after in loaded_after_the_data("/#/projects"))
    wait_for_offset(world, at_reload + (4 << 20))
    wait_for_offset(world, size, timeout=60)
    page.wait_for_function("() => localStorage.getItem('relay.uploads_unfinished') === null")
    # Done: the next load waits for the page again.
    assert all(after > 0 for after in loaded_after_the_data("/#/projects"))
    context.close()
    deadline = time.monotonic() + 30
    while not (stored := world.cloud_db("SELECT sha256 FROM files WHERE name = 'later.bin'")):
        assert time.monotonic() < deadline, "never reached the cloud"
        time.sleep(0.2)
    assert stored[0]["sha256"] == hashlib.sha256(content).hexdigest()
