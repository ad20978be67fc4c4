"""
Jobs in the browser: the form a kind's schema makes (a field of each
kind, defaults, required, the edge's refusal shown and nothing queued),
and a job's log followed live through cuts of the browser's own
connection to the edge: every line once, in order, as the edge holds it.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from .browser_world import CHATTY_LINES, Throttle, World, browser, log_in, new_page, shoot, world  # noqa: F401


def new_job_form(page: Page, kind: str) -> str:
    """The form of a new job in alice's own project; its project id."""
    page.locator("#nav-projects a", has_text="Home").click()
    page.click("#new-job")
    page.select_option("#job-kind", kind)
    return page.url.split("/projects/", 1)[1].split("/", 1)[0]


def test_the_form_follows_the_kinds_schema(world: World, browser: Browser) -> None:  # noqa: F811
    problems: list[str] = []
    page = new_page(browser, problems)
    log_in(page, world.edge_url)
    project_id = new_job_form(page, "echo")
    expect(page.locator("#kind-description")).to_have_text("Says its parameters.")
    name = page.locator("#param-name")
    expect(name).to_have_attribute("required", "")
    expect(name).to_have_attribute("maxlength", "20")
    expect(page.locator("label[for=param-name]")).to_contain_text("(required)")
    expect(page.locator("#param-count")).to_have_value("2")
    expect(page.locator("#param-count")).to_have_attribute("min", "1")
    expect(page.locator("#param-count")).to_have_attribute("max", "5")
    expect(page.locator("#param-ratio")).to_have_value("0.5")
    expect(page.locator("#param-loud")).to_be_checked()
    expect(page.locator("#param-mode")).to_have_value('"slow"')
    shoot(page, "job-form-from-schema")

    # The browser holds back what the form's own rules refuse; the edge the rest.
    page.fill("#param-name", "-rf")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#job-error")).to_contain_text("may not start with '-'")
    assert world.edge_db("SELECT command_id FROM pending_commands WHERE type = 'job.submit'") == []

    page.fill("#param-name", "ada")
    page.fill("#param-count", "3")
    page.locator("#param-loud").uncheck()
    page.select_option("#param-mode", '"fast"')
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-log")).to_contain_text("name=ada count=3 ratio=0.5 loud=false mode=fast",
                                                     timeout=60_000)  # fmt: skip
    expect(page.locator("#job-facts")).to_have_attribute("data-state", "succeeded", timeout=30_000)
    [job] = world.cloud_db("SELECT project_id, parameters FROM jobs WHERE id = ?", (job_id,))
    assert job["project_id"] == project_id
    assert json.loads(job["parameters"]) == {"name": "ada", "count": 3, "ratio": 0.5, "loud": False, "mode": "fast"}

    # Inputs: a kind that takes at least one refuses none, before sending.
    new_job_form(page, "checksum")
    expect(page.locator("#job-inputs legend")).to_have_text("Input files (1 to 100)")
    page.click("#job-form button[type=submit]")
    expect(page.locator("#job-error")).to_contain_text("Choose 1 to 100 input files (0 chosen)")
    assert len(world.cloud_db("SELECT id FROM jobs")) == 1
    assert problems == []


@pytest.fixture
def web_link(world: World, tmp_path: Path) -> Iterator[Throttle]:  # noqa: F811
    link = Throttle(world.edge_url, tmp_path / "linkemu-web.log")
    try:
        yield link
    finally:
        link.stop()


def lines_shown(page: Page) -> list[str]:
    return [line for line in page.locator("#job-log").inner_text().splitlines() if line.startswith("line ")]


def test_a_log_followed_across_cuts_of_the_browsers_connection(
    world: World, browser: Browser, web_link: Throttle  # noqa: F811
) -> None:
    page = new_page(browser)
    log_in(page, f"http://127.0.0.1:{web_link.port}")
    new_job_form(page, "chatty")
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-log")).to_contain_text("line 20 of the log", timeout=60_000)
    # Every connection of the page reset, twice, while lines keep coming:
    # the event stream reconnects (3 s), the page fetches what it missed.
    # Lines are counted from when the emulator says it reset them (its
    # counters come every 0.2 s), not from when the signal was sent.
    for _ in range(2):
        resets = web_link.counter("resets_injected")
        web_link.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while web_link.counter("resets_injected") <= resets:
            assert time.monotonic() < deadline, "the emulator did not reset the page's connections"
            time.sleep(0.05)
        before = len(lines_shown(page))
        time.sleep(1.0)
        assert len(lines_shown(page)) <= before + 2, "lines came while the stream was cut"
        time.sleep(2.5)
    expect(page.locator("#job-facts")).to_have_attribute("data-state", "succeeded", timeout=60_000)
    expect(page.locator("#job-log")).to_contain_text(f"line {CHATTY_LINES} of the log", timeout=10_000)
    shoot(page, "job-log-after-cuts")
    assert lines_shown(page) == [f"line {n} of the log" for n in range(1, CHATTY_LINES + 1)]
    held = page.request.get(f"http://127.0.0.1:{web_link.port}/api/v1/jobs/{job_id}/log")
    assert held.status == 200
    assert page.locator("#job-log").get_attribute("data-bytes") == str(len(held.body()))
    assert page.locator("#job-log").inner_text().strip() == held.text().strip()
    assert web_link.counter("resets_injected") >= 2


def test_a_running_job_is_cancelled_from_its_page(world: World, browser: Browser) -> None:  # noqa: F811
    page = new_page(browser)
    log_in(page, world.edge_url)
    new_job_form(page, "chatty")
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-log")).to_contain_text("line 5 of the log", timeout=60_000)
    expect(page.locator("#job-facts")).to_have_attribute("data-state", "running")
    page.click("#cancel-job")
    expect(page.locator("#cancel-job")).to_be_hidden()
    expect(page.locator("#job-facts")).to_have_attribute("data-state", "cancelled", timeout=30_000)
    shoot(page, "job-cancelled")
    assert world.cloud_db("SELECT state FROM jobs WHERE id = ?", (job_id,))[0]["state"] == "cancelled"
    assert len(lines_shown(page)) < CHATTY_LINES
