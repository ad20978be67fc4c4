"""
The whole way, as a person in a browser goes it: Debian's Chromium, driven
by Playwright, logs in at a real edge (its replica synced from a real cloud
over RabbitMQ), uploads a file with the page's Uppy over tus, and watches it
reach S3 (moto's server) through the transfer stage, byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright

from relay.testing.s3servers import S3Server, free_port, start_moto
from relay.testing.transfer_world import Node, Vhost, read_db, write_config

from .conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery staple"


@dataclass
class Deployment:
    edge_url: str
    s3: S3Server
    edge: Node
    cloud: Node


def _edge_knows(db: Path, name: str) -> bool:
    try:
        return bool(read_db(db, "SELECT 1 FROM replica_users WHERE name = ?", (name,)))
    except sqlite3.OperationalError:
        return False  # not created yet


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    vhost = Vhost()
    vhost.create()
    s3 = start_moto(log_path=tmp_path / "moto.log")
    credentials = s3.write_credentials(tmp_path / "s3-credentials.toml")
    edge_port = free_port()
    cloud_config = write_config(tmp_path / "cloud.toml", {
        "cloud": {"listen": f"tcp:{free_port()}:interface=127.0.0.1", "data_dir": str(tmp_path / "cloud")},
        "link": {"url": vhost.url(), "heartbeat": 2},
        "s3": {"bucket": s3.bucket, "endpoint_url": s3.endpoint, "addressing_style": "path",
               "credentials_file": str(credentials)},
    })
    edge_config = write_config(tmp_path / "edge.toml", {
        "edge": {"id": "browser", "listen": f"tcp:{edge_port}:interface=127.0.0.1",
                 "data_dir": str(tmp_path / "edge"), "web_dir": str(ROOT / "web")},
        "link": {"url": vhost.url(), "heartbeat": 2},
    })
    subprocess.run(
        [str(Path(sys.executable).parent / "relay"), "user", "add", "alice", "--password-stdin",
         "--config", str(cloud_config)],
        input=PASSWORD.encode(), check=True, capture_output=True, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"},
    )
    cloud = Node("relay-cloud", cloud_config, tmp_path / "cloud.log", tmp_path).start()
    edge = Node("relay-edge", edge_config, tmp_path / "edge.log", tmp_path).start()
    edge_url = f"http://127.0.0.1:{edge_port}"
    try:
        # The edge knows alice once its replica has caught up with the cloud
        # (asking by logging in would count as failed logins, and throttle).
        deadline = time.monotonic() + 60
        while not _edge_knows(tmp_path / "edge" / "edge.db", "alice"):
            assert edge.alive and cloud.alive, edge.log_text()[-3000:] + cloud.log_text()[-3000:]
            assert time.monotonic() < deadline, "alice never reached the edge's replica"
            time.sleep(0.2)
        yield Deployment(edge_url, s3, edge, cloud)
    finally:
        edge.stop()
        cloud.stop()
        s3.stop()
        vhost.delete()


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: print("console:", m.type, m.text))
            page.on("pageerror", lambda e: print("pageerror:", e))
            yield page
        finally:
            browser.close()


def log_in(page: Page, edge_url: str, password: str) -> None:
    page.goto(edge_url + "/")
    page.fill("#login-form input[name=name]", "alice")
    page.fill("#login-form input[name=password]", password)
    page.click("#login-form button[type=submit]")


def test_a_wrong_password_is_refused_on_the_page(deployment: Deployment, page: Page) -> None:
    log_in(page, deployment.edge_url, "not the password")
    expect(page.locator("#login-error")).to_have_text("wrong name or password")
    expect(page.locator("#workspace")).to_be_hidden()


def test_upload_in_the_browser_reaches_s3_byte_identical(
    deployment: Deployment, page: Page, tmp_path: Path
) -> None:
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        # Chromium reports every 4xx answer (401 before logging in) as well.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(str(error)))

    log_in(page, deployment.edge_url, PASSWORD)
    expect(page.locator("#workspace")).to_be_visible()
    expect(page.locator("#user-name")).to_have_text("alice")

    # 20 MiB: two tus PATCHes of the page's 16 MiB chunks, three S3 parts.
    content = os.urandom(20 << 20)
    design = tmp_path / "design.step"
    design.write_bytes(content)
    # Into alice's own project, from its page.
    page.locator("#nav-projects a").first.click()
    page.locator("#dashboard input[type=file]").first.set_input_files(str(design))
    page.click(".uppy-StatusBar-actionBtn--upload")

    row = page.locator("#files tbody tr", has_text="design.step")
    expect(row).to_have_attribute("data-state", "in_cloud", timeout=60_000)

    # Reloading shows the same, from the edge alone; the session survives.
    page.reload()
    expect(page.locator("#files tbody tr", has_text="design.step")).to_have_attribute("data-state", "in_cloud")

    objects = deployment.s3.client().list_objects_v2(Bucket=deployment.s3.bucket).get("Contents", [])
    assert len(objects) == 1
    body = deployment.s3.client().get_object(Bucket=deployment.s3.bucket, Key=objects[0]["Key"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(content).hexdigest()
    assert problems == []


def test_logging_out_returns_to_the_login_form(deployment: Deployment, page: Page) -> None:
    log_in(page, deployment.edge_url, PASSWORD)
    expect(page.locator("#workspace")).to_be_visible()
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    page.reload()
    expect(page.locator("#login")).to_be_visible()


def test_a_new_project_shows_pending_then_settles_when_the_cloud_applies_it(
    deployment: Deployment, page: Page
) -> None:
    log_in(page, deployment.edge_url, PASSWORD)
    expect(page.locator("#workspace")).to_be_visible()
    page.fill("#new-project input[name=name]", "Turbine blades")
    page.click("#new-project button[type=submit]")
    item = page.locator("#projects tbody tr", has_text="Turbine blades")
    # At once, from the edge alone: pending until the cloud's answer.
    expect(item).to_be_visible(timeout=2_000)
    # The cloud applies it; the live event makes the page refetch.
    expect(item).not_to_have_class("pending", timeout=30_000)
    expect(item).not_to_contain_text("pending")
    # Now it can take uploads.
    item.locator("th a").click()
    expect(page.locator("#upload-section")).to_be_visible()
    expect(page.locator("#nav-projects a", has_text="Turbine blades")).to_have_count(1)


def test_a_one_time_password_must_be_replaced_first(deployment: Deployment, page: Page, tmp_path: Path) -> None:
    # An admin resets alice's password: a generated, one-time one.
    done = subprocess.run(
        [str(Path(sys.executable).parent / "relay"), "user", "passwd", "alice", "--json",
         "--config", str(deployment.cloud.config)],
        check=True, capture_output=True, cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"},
    )
    one_time = json.loads(done.stdout)["password"]
    edge_db = tmp_path / "edge" / "edge.db"
    deadline = time.monotonic() + 30
    while not read_db(edge_db, "SELECT 1 FROM replica_users WHERE name = 'alice' AND must_change_password = 1"):
        assert time.monotonic() < deadline, "the reset never reached the edge"
        time.sleep(0.2)

    log_in(page, deployment.edge_url, one_time)
    expect(page.locator("#first-password")).to_be_visible()
    expect(page.locator("#projects")).to_have_count(0)  # nothing but the new password
    expect(page.locator("#keys")).to_be_hidden()
    page.fill("#password-form input[name=current_password]", one_time)
    page.fill("#password-form input[name=new_password]", "alice chose this one")
    page.click("#password-form button[type=submit]")
    # Once the new password is at the edge, the session ends: log in again.
    expect(page.locator("#login")).to_be_visible(timeout=30_000)
    log_in(page, deployment.edge_url, "alice chose this one")
    expect(page.locator("#projects")).to_be_visible()
    expect(page.locator("#first-password")).to_have_count(0)
