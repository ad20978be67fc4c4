"""
The pages the whole way, as people use them: Debian's Chromium (Playwright)
at a real edge and cloud (twistd), RabbitMQ, moto's S3, with the edge's
AMQP link through the link emulator (L{tests.browser_world}).

A project is created and shared, three files dropped onto it reach the
cloud, a checksum job on them is followed live to its result, which
downloads byte-identical; with the link cut the pages still answer, say
the link is down, and queue a project and a job as pending, which settle
once it is back, each once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from .browser_world import World, browser, log_in, new_page, shoot, world  # noqa: F401


def create_project(page: Page, name: str) -> str:
    """Create a project on the projects page; its id once the cloud has applied it."""
    page.goto(page.url.split("#")[0] + "#/projects")
    page.fill("#new-project input[name=name]", name)
    page.click("#new-project button[type=submit]")
    row = page.locator("#projects tbody tr", has_text=name)
    expect(row).to_be_visible(timeout=2_000)
    return row.get_attribute("data-project") or ""


def drop_files(page: Page, paths: list[Path]) -> None:
    page.locator("#dashboard input[type=file]").first.set_input_files([str(p) for p in paths])
    page.click(".uppy-StatusBar-actionBtn--upload")


def test_a_project_shared_uploaded_into_and_a_job_followed_to_its_result(
    world: World, browser: Browser, tmp_path: Path  # noqa: F811
) -> None:
    problems: list[str] = []
    page = new_page(browser, problems, accept_downloads=True)
    log_in(page, world.edge_url)
    expect(page.locator("#statusbar")).to_have_attribute("data-link", "up", timeout=10_000)
    expect(page.locator("#statusbar")).to_contain_text("Link to the cloud: up")

    # A project: pending at once, settled once the cloud has applied it.
    project_id = create_project(page, "Wind tunnel <b>&amp; co</b>")
    row = page.locator(f"#projects tbody tr[data-project='{project_id}']")
    expect(row.locator(".state")).to_have_text("saved", timeout=30_000)
    # The name is text, never markup.
    expect(row.locator("th a")).to_have_text("Wind tunnel <b>&amp; co</b>")
    assert page.locator("#projects b").count() == 0
    expect(page.locator("#nav-projects a", has_text="Wind tunnel")).to_be_visible()
    shoot(page, "projects-link-up")

    # Its page: add bob as a member.
    page.click(f"#projects tbody tr[data-project='{project_id}'] th a")
    expect(page.locator("#page h1")).to_have_text("Wind tunnel <b>&amp; co</b>")
    page.fill("#add-member input[name=name]", "bob")
    page.select_option("#add-member select[name=role]", "member")
    page.click("#add-member button[type=submit]")
    bob = page.locator("#members tr[data-member=bob]")
    expect(bob).to_be_visible(timeout=5_000)
    expect(bob.locator(".state")).to_have_text("saved", timeout=30_000)
    # A viewer, then a member again: each change pending, then saved.
    # bob made a viewer: the cloud has it, and the edge shows it settled.
    bob.locator("select.role").select_option("viewer")
    deadline = time.monotonic() + 30
    while world.cloud_db("SELECT role FROM members WHERE project_id = ? AND user_id = ?",
                         (project_id, world.users["bob"]))[0]["role"] != "viewer":
        assert time.monotonic() < deadline, "the role never changed in the cloud"
        time.sleep(0.2)
    expect(bob.locator(".state")).to_have_text("saved", timeout=30_000)
    page.reload()
    expect(page.locator("#members tr[data-member=bob] select.role")).to_have_value("viewer", timeout=30_000)

    # Three files dropped onto the project reach the cloud.
    contents = {f"part-{n}.bin": os.urandom((n + 1) * 300_000) for n in range(3)}
    paths = []
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
        paths.append(tmp_path / name)
    drop_files(page, paths)
    links = page.locator("#files tbody tr a.download")
    expect(links).to_have_count(3, timeout=60_000)
    for name in contents:
        expect(page.locator("#files tbody tr", has_text=name).locator(".state")).to_have_text("in the cloud")
        expect(page.locator("#files tbody tr", has_text=name).locator(".uploaded-by")).to_have_text("alice")
    stored = world.cloud_db("SELECT name, sha256 FROM files WHERE project_id = ?", (project_id,))
    assert {r["name"]: r["sha256"] for r in stored} == {n: hashlib.sha256(c).hexdigest() for n, c in contents.items()}
    shoot(page, "project-link-up")

    # A checksum job on them, from the generated form.
    page.click("#new-job")
    expect(page.locator("#job-kind")).to_be_visible()
    page.select_option("#job-kind", "checksum")
    for name in contents:
        page.locator("#job-inputs label", has_text=name).locator("input").check()
    shoot(page, "job-new-link-up")
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    # The log's lines arrive live, each once.
    log = page.locator("#job-log")
    for content in contents.values():
        expect(log).to_contain_text(hashlib.sha256(content).hexdigest(), timeout=60_000)
    expect(page.locator("#job-facts")).to_have_attribute("data-state", "succeeded", timeout=60_000)
    text = log.inner_text()
    for content in contents.values():
        assert text.count(hashlib.sha256(content).hexdigest()) == 1, text
    expect(page.locator("#job-progress")).to_have_attribute("value", "1")
    result = page.locator("#job-results li[data-result$='-checksums.json'] a")
    expect(result).to_be_visible(timeout=30_000)
    shoot(page, "job-link-up")
    with page.expect_download(timeout=30_000) as started:
        result.click()
    saved = tmp_path / "checksums.json"
    started.value.save_as(saved)
    [row_] = world.cloud_db("SELECT object_key FROM files WHERE job_id = ? AND name LIKE '%-checksums.json'", (job_id,))
    in_s3 = world.s3.client().get_object(Bucket=world.s3.bucket, Key=row_["object_key"])["Body"].read()
    assert saved.read_bytes() == in_s3
    report = json.loads(saved.read_text())
    assert sorted(f["sha256"] for f in report["files"]) == sorted(hashlib.sha256(c).hexdigest() for c in contents.values())
    assert problems == []


def test_with_the_link_cut_pages_answer_and_changes_wait_then_settle_once(
    world: World, browser: Browser, tmp_path: Path  # noqa: F811
) -> None:
    page = new_page(browser)
    log_in(page, world.edge_url)
    project_id = create_project(page, "Before the cut")
    expect(page.locator(f"#projects tbody tr[data-project='{project_id}'] .state")).to_have_text("saved", timeout=30_000)
    page.goto(world.edge_url + f"/#/projects/{project_id}")
    (tmp_path / "input.txt").write_bytes(b"hello through the link\n")
    drop_files(page, [tmp_path / "input.txt"])
    expect(page.locator("#files tbody tr a.download")).to_have_count(1, timeout=60_000)

    world.link.cut()
    cut_at = time.monotonic()
    expect(page.locator("#statusbar")).not_to_have_attribute("data-link", "up", timeout=20_000)
    expect(page.locator("#statusbar")).to_contain_text(
        "Changes are saved here and will reach the cloud when the link is back")
    # Every page still loads, at once, from the edge.
    for route, name in [("#/projects", "projects"), (f"#/projects/{project_id}", "project"),
                        (f"#/projects/{project_id}/jobs/new", "job-new"), ("#/account", "account")]:
        page.goto(world.edge_url + "/" + route)
        started = time.monotonic()
        page.reload()
        expect(page.locator("#page h1")).to_be_visible(timeout=5_000)
        expect(page.locator("#statusbar")).to_contain_text("Changes are saved here")
        took = time.monotonic() - started
        print(f"{route} reloaded with the link down in {took * 1000:.0f} ms")
        assert took < 3, took
        shoot(page, f"{name}-link-down")

    # A new project and a job submission: pending.
    pending_id = create_project(page, "Made while cut off")
    expect(page.locator(f"#projects tbody tr[data-project='{pending_id}'] .state")).to_contain_text("pending")
    page.goto(world.edge_url + f"/#/projects/{project_id}/jobs/new")
    page.select_option("#job-kind", "checksum")
    page.locator("#job-inputs label", has_text="input.txt").locator("input").check()
    page.click("#job-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-facts [data-fact=State]")).to_contain_text("pending")
    expect(page.locator("#cancel-job")).to_be_hidden()
    expect(page.locator("#statusbar")).to_contain_text("2 changes")
    # A file dropped meanwhile waits at the edge; the status bar names each thing waiting.
    page.goto(world.edge_url + f"/#/projects/{project_id}")
    (tmp_path / "during-cut.txt").write_bytes(b"written while the link was down\n")
    drop_files(page, [tmp_path / "during-cut.txt"])
    expect(page.locator("#files tbody tr", has_text="during-cut.txt").locator(".state")).to_contain_text(
        "at the edge", timeout=20_000)
    page.click("#statusbar details summary")
    waiting = page.locator("#statusbar details li")
    expect(waiting.filter(has_text="create project Made while cut off")).to_have_count(1)
    expect(waiting.filter(has_text="create project Made while cut off")).to_contain_text("waiting for the link")
    expect(waiting.filter(has_text="submit a checksum job")).to_have_count(1)
    expect(waiting.filter(has_text="during-cut.txt")).to_contain_text("to send")
    shoot(page, "project-link-down-waiting")
    page.goto(world.edge_url + f"/#/jobs/{job_id}")
    shoot(page, "job-link-down")
    assert world.link.down and time.monotonic() - cut_at < 60

    world.link.restore()
    expect(page.locator("#statusbar")).to_have_attribute("data-link", "up", timeout=60_000)
    expect(page.locator("#job-facts")).to_have_attribute("data-state", "succeeded", timeout=60_000)
    expect(page.locator("#job-facts [data-fact=State]")).not_to_contain_text("pending")
    page.goto(world.edge_url + "/#/projects")
    expect(page.locator(f"#projects tbody tr[data-project='{pending_id}'] .state")).to_have_text("saved", timeout=30_000)
    expect(page.locator("#statusbar")).to_contain_text("0 changes")
    shoot(page, "projects-link-restored")
    expect(page.locator("#statusbar")).not_to_contain_text("to send", timeout=30_000)
    # Nothing lost, nothing doubled.
    [arrived] = world.cloud_db("SELECT sha256 FROM files WHERE name = 'during-cut.txt'")
    assert arrived["sha256"] == hashlib.sha256(b"written while the link was down\n").hexdigest()
    assert len(world.cloud_db("SELECT id FROM projects WHERE name = 'Made while cut off'")) == 1
    assert len(world.cloud_db("SELECT id FROM jobs WHERE id = ?", (job_id,))) == 1
    assert len(world.cloud_db("SELECT id FROM jobs WHERE project_id = ?", (project_id,))) == 1
