"""
The account page in the browser: an API key made there is shown once,
copies to the clipboard, works once the cloud has it, and stops when it
is revoked; the password changes there.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from playwright.sync_api import Browser, expect

from .browser_world import PASSWORDS, World, browser, log_in, new_page, shoot, world  # noqa: F401


def _status_with(url: str, token: str) -> int:
    request = urllib.request.Request(url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def _eventually(check: object, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_an_api_key_is_shown_once_works_and_is_revoked(world: World, browser: Browser) -> None:  # noqa: F811
    page = new_page(browser, permissions=["clipboard-read", "clipboard-write"])
    log_in(page, world.edge_url)
    page.click("header a[href='#/account']")
    expect(page.locator("#key-list")).to_contain_text("No API keys.")
    page.fill("#key-form input[name=name]", "CI <script>")
    page.click("#key-form button[type=submit]")
    secret_field = page.locator("#new-key-secret")
    expect(secret_field).to_be_visible()
    secret = secret_field.input_value()
    assert secret.startswith("relay_"), secret
    page.click("#copy-key")
    expect(page.locator("#copy-result")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    row = page.locator("#key-list tbody tr", has_text="CI <script>")
    expect(row).to_be_visible()
    shoot(page, "account-new-key")
    expect(row.locator(".state")).to_have_text("active", timeout=30_000)
    assert _eventually(lambda: _status_with(world.edge_url, secret) == 200), "the key never worked"
    # Shown once: not after a reload, nor in the list's answer.
    page.reload()
    expect(page.locator("#key-list tbody tr", has_text="CI <script>")).to_be_visible()
    expect(page.locator("#new-key-secret")).to_have_count(0)
    assert secret not in page.request.get(world.edge_url + "/api/v1/keys").text()
    shoot(page, "account-link-up")

    page.locator("#key-list tbody tr", has_text="CI <script>").locator("button", has_text="Revoke").click()
    expect(page.locator("#key-list")).to_contain_text("No API keys.", timeout=30_000)
    assert _eventually(lambda: _status_with(world.edge_url, secret) == 401), "the key still works"


def test_the_password_changes_on_the_account_page(world: World, browser: Browser) -> None:  # noqa: F811
    page = new_page(browser)
    log_in(page, world.edge_url)
    page.goto(world.edge_url + "/#/account")
    page.fill("#password-form input[name=current_password]", "not it at all")
    page.fill("#password-form input[name=new_password]", "a new long password")
    page.click("#password-form button[type=submit]")
    expect(page.locator("#password-result")).to_have_class("error")
    page.fill("#password-form input[name=current_password]", PASSWORDS["alice"])
    page.fill("#password-form input[name=new_password]", "a new long password")
    page.click("#password-form button[type=submit]")
    expect(page.locator("#password-result")).to_contain_text("Sent")
    # Once the cloud's change is back at the edge the session ends: the login form says so.
    expect(page.locator("#login")).to_be_visible(timeout=30_000)
    expect(page.locator("#login-error")).to_contain_text("log in")
    page.fill("#login-form input[name=name]", "alice")
    page.fill("#login-form input[name=password]", "a new long password")
    page.click("#login-form button[type=submit]")
    # Back where it was.
    expect(page.locator("#page h1")).to_have_text("Account")
    expect(page.locator("#user-name")).to_have_text("alice")
