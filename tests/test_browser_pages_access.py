"""
Who sees what, in the browser: a second user sees only the projects they
are a member of; another's project, file or job answers 404 on the pages
and on every API route. The pages on a phone's screen, by keyboard.
"""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import Browser, expect

from .browser_world import World, browser, log_in, new_page, shoot, world  # noqa: F401


def test_a_second_user_sees_only_their_projects(world: World, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    alice = new_page(browser)
    log_in(alice, world.edge_url, "alice")
    alice.fill("#new-project input[name=name]", "Alice's secret")
    alice.click("#new-project button[type=submit]")
    row = alice.locator("#projects tbody tr", has_text="Alice's secret")
    expect(row.locator(".state")).to_have_text("saved", timeout=30_000)
    secret = row.get_attribute("data-project")
    row.locator("th a").click()
    (tmp_path / "plans.txt").write_bytes(b"the plans\n")
    alice.locator("#dashboard input[type=file]").first.set_input_files(str(tmp_path / "plans.txt"))
    alice.click(".uppy-StatusBar-actionBtn--upload")
    link = alice.locator("#files tbody tr a.download")
    expect(link).to_have_count(1, timeout=60_000)
    file_id = alice.locator("#files tbody tr[data-file]").first.get_attribute("data-file")

    token = alice.evaluate("fetch('/api/v1/me').then(r => r.json()).then(b => b.csrf_token)")
    submitted = alice.request.post(world.edge_url + "/api/v1/jobs", headers={"X-CSRF-Token": token},
                                   data={"project_id": secret, "kind": "echo", "parameters": {"name": "x"}})
    assert submitted.status == 202, submitted.text()
    job_id = submitted.json()["job"]["id"]

    bob = new_page(browser)
    log_in(bob, world.edge_url, "bob")
    expect(bob.locator("#projects tbody tr")).to_have_count(1)  # his own
    expect(bob.locator("#projects")).not_to_contain_text("Alice's secret")
    expect(bob.locator("#nav-projects li")).to_have_count(1)
    bob.goto(world.edge_url + f"/#/projects/{secret}")
    expect(bob.locator("#page h1")).to_have_text("No such project")
    expect(bob.locator("#files")).to_be_hidden()
    shoot(bob, "project-of-another-user")
    for method, path in [("GET", f"/api/v1/projects/{secret}"), ("GET", f"/api/v1/files/{file_id}/content"),
                         ("PATCH", f"/api/v1/projects/{secret}"), ("DELETE", f"/api/v1/projects/{secret}"),
                         ("POST", f"/api/v1/projects/{secret}/members"), ("GET", f"/api/v1/jobs/{job_id}"),
                         ("GET", f"/api/v1/jobs/{job_id}/log"), ("POST", f"/api/v1/jobs/{job_id}/cancel"),
                         ("DELETE", f"/api/v1/files/{file_id}"), ("GET", f"/api/v1/jobs?project={secret}")]:
        answer = bob.request.fetch(world.edge_url + path, method=method, data={"name": "bob", "role": "member"},
                                   headers={"X-CSRF-Token": bob.evaluate("fetch('/api/v1/me').then(r => r.json())"
                                                                         ".then(b => b.csrf_token)")})
        assert answer.status == 404, (method, path, answer.status, answer.text())
        assert answer.json()["code"] == "not_found"
    bob.goto(world.edge_url + f"/#/jobs/{job_id}")
    expect(bob.locator("#page h1")).to_have_text("No such job")
    listed = bob.request.get(world.edge_url + f"/api/v1/files?project={secret}")
    assert listed.status == 404 or listed.json()["files"] == []
    # Once alice adds him as a viewer, it is his to see (not to change).
    alice.fill("#add-member input[name=name]", "bob")
    alice.select_option("#add-member select[name=role]", "viewer")
    alice.click("#add-member button[type=submit]")
    expect(alice.locator("#members tr[data-member=bob] .state")).to_have_text("saved", timeout=30_000)
    bob.goto(world.edge_url + f"/#/projects/{secret}")
    expect(bob.locator("#page h1")).to_have_text("Alice's secret", timeout=10_000)
    expect(bob.locator("#page p.muted").first).to_contain_text("Your role: viewer")
    expect(bob.locator("#upload-section")).to_be_hidden()
    expect(bob.locator("#new-job")).to_be_hidden()
    expect(bob.locator("#files tbody tr", has_text="plans.txt").locator("a.download")).to_have_count(1)
    expect(bob.locator(f"#jobs tr[data-job='{job_id}']")).to_be_visible()


def test_the_pages_on_a_phone_and_by_keyboard(world: World, browser: Browser) -> None:  # noqa: F811
    page = new_page(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    log_in(page, world.edge_url, "alice")
    expect(page.locator("#projects")).to_be_visible()
    # The navigation folds away behind a button on a narrow screen.
    expect(page.locator("#sidebar")).to_be_hidden()
    page.click("#nav-toggle")
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#nav-toggle")).to_have_attribute("aria-expanded", "true")
    shoot(page, "phone-navigation")
    page.locator("#nav-projects a").first.click()
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#files")).to_be_visible()
    # Nothing wider than the screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390 + 1
    shoot(page, "phone-project")
    page.goto(world.edge_url + "/#/account")
    expect(page.locator("#password-form")).to_be_visible()
    shoot(page, "phone-account")

    # By keyboard: the skip link first, then to the main pane; forms label every control.
    desk = new_page(browser)
    log_in(desk, world.edge_url, "alice")
    desk.reload()
    expect(desk.locator("#projects")).to_be_visible()
    desk.keyboard.press("Tab")
    assert desk.evaluate("document.activeElement.className") == "skip"
    desk.keyboard.press("Enter")
    assert desk.evaluate("document.activeElement.id") == "main"
    unlabelled = desk.evaluate("""[...document.querySelectorAll('#page input, #page select')]
        .filter(e => !e.labels?.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)""")
    assert unlabelled == []
    for landmark in ["banner", "navigation", "main", "contentinfo"]:
        assert desk.get_by_role(landmark).count() >= 1 or landmark == "contentinfo", landmark
    expect(desk.get_by_role("status", name="Link to the cloud")).to_be_visible()


def test_a_project_renamed_and_deleted_and_a_file_deleted(world: World, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    page = new_page(browser)
    page.on("dialog", lambda dialog: dialog.accept())
    log_in(page, world.edge_url, "alice")
    home = page.locator("#projects tbody tr", has_text="Home")
    expect(home.locator("button", has_text="Rename")).to_be_visible()
    expect(home.locator("button", has_text="Delete")).to_have_count(0)  # a default project stays
    page.fill("#new-project input[name=name]", "Draft")
    page.click("#new-project button[type=submit]")
    row = page.locator("#projects tbody tr", has_text="Draft")
    expect(row.locator(".state")).to_have_text("saved", timeout=30_000)
    project_id = row.get_attribute("data-project")

    row.locator("button", has_text="Rename").click()
    page.fill("#projects form.rename input[name=name]", "Final")
    page.click("#projects form.rename button[type=submit]")
    renamed = page.locator(f"#projects tbody tr[data-project='{project_id}']")
    expect(renamed.locator("th a")).to_have_text("Final")
    expect(renamed.locator(".state")).to_have_text("saved", timeout=30_000)
    expect(page.locator("#nav-projects a", has_text="Final")).to_be_visible()
    assert world.cloud_db("SELECT name FROM projects WHERE id = ?", (project_id,))[0]["name"] == "Final"

    # A file in it, deleted.
    renamed.locator("th a").click()
    (tmp_path / "old.txt").write_bytes(b"old\n")
    page.locator("#dashboard input[type=file]").first.set_input_files(str(tmp_path / "old.txt"))
    page.click(".uppy-StatusBar-actionBtn--upload")
    expect(page.locator("#files tbody tr a.download")).to_have_count(1, timeout=60_000)
    page.locator("#files tbody tr", has_text="old.txt").locator("button.delete-file").click()
    expect(page.locator("#files tbody tr", has_text="old.txt")).to_have_count(0, timeout=30_000)
    assert world.cloud_db("SELECT id FROM files WHERE project_id = ?", (project_id,)) == []

    page.goto(world.edge_url + "/#/projects")
    page.locator(f"#projects tbody tr[data-project='{project_id}']").locator("button", has_text="Delete").click()
    expect(page.locator(f"#projects tbody tr[data-project='{project_id}']")).to_have_count(0, timeout=30_000)
    expect(page.locator("#nav-projects a", has_text="Final")).to_have_count(0)
    assert world.cloud_db("SELECT id FROM projects WHERE id = ?", (project_id,)) == []


def test_redraws_keep_the_keyboards_place(world: World, browser: Browser, tmp_path: Path) -> None:  # noqa: F811
    page = new_page(browser)
    log_in(page, world.edge_url, "alice")
    page.locator("#nav-projects a").first.click()
    (tmp_path / "first.txt").write_bytes(b"first\n")
    page.locator("#dashboard input[type=file]").first.set_input_files(str(tmp_path / "first.txt"))
    page.click(".uppy-StatusBar-actionBtn--upload")
    first = page.locator("#files tbody tr", has_text="first.txt")
    expect(first.locator("a.download")).to_be_visible(timeout=60_000)
    # Another upload redraws the table many times over.
    (tmp_path / "second.bin").write_bytes(os.urandom(4 << 20))
    page.click("#dashboard .uppy-DashboardContent-addMore")
    page.locator("#dashboard input[type=file]").first.set_input_files(str(tmp_path / "second.bin"))
    page.click(".uppy-StatusBar-actionBtn--upload")
    first.locator("a.download").focus()
    redraws = page.evaluate("""new Promise((resolve) => {
      let count = 0;
      new MutationObserver(() => { count += 1; }).observe(document.querySelector('#files tbody'), {childList: true});
      setTimeout(() => resolve(count), 3000);
    })""")
    assert redraws >= 1
    expect(page.locator("#files tbody tr", has_text="second.bin").locator("a.download")).to_be_visible(timeout=60_000)
    focused = page.evaluate("[document.activeElement.className, document.activeElement.closest('tr')?.textContent]")
    assert focused[0] == "download" and "first.txt" in focused[1], focused


def test_a_change_the_cloud_refuses_becomes_a_notice(world: World, browser: Browser) -> None:  # noqa: F811
    page = new_page(browser)
    log_in(page, world.edge_url, "alice")
    # The edge cannot know the name is taken (the cloud decides): pending, then refused.
    page.fill("#new-project input[name=name]", "Home")
    page.click("#new-project button[type=submit]")
    expect(page.locator("#projects tbody tr.pending", has_text="Home")).to_have_count(1, timeout=2_000)
    notice = page.locator("#notices .notice")
    expect(notice).to_contain_text("you already have a project named 'Home'", timeout=30_000)
    expect(page.locator("#projects tbody tr", has_text="Home")).to_have_count(1)
    expect(page.locator("#projects tbody tr.pending")).to_have_count(0)
    shoot(page, "notice-refused")
    notice.locator("button", has_text="Dismiss").click()
    expect(notice).to_have_count(0)
    page.reload()
    expect(page.locator("#projects")).to_be_visible()
    expect(page.locator("#notices .notice")).to_have_count(0)
