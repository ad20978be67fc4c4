"""
A whole deployment for the browser tests of the pages: a RabbitMQ vhost of
its own, moto's S3 server, C{twistd relay-cloud} (running the shipped job
kinds) and C{twistd relay-edge}, the edge's AMQP connection through the link
emulator (a process of its own, so a test can cut and restore the link),
two users, and Debian's Chromium driven by Playwright.

Screenshots go to C{test-artifacts/} at the top of the work tree (not
committed) for a reviewer to look at.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from relay.testing.s3servers import S3Server, free_port, start_moto
from relay.testing.transfer_world import AMQP_PORT, Node, Vhost, read_db, write_config

from .conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
PASSWORDS = {"alice": "correct horse battery staple", "bob": "bob's own long password"}
#: The shipped job kinds (etc/cloud.toml's [jobs] tables), with a short lease.
JOBS_TOML = "[jobs]\n" + (ROOT / "etc" / "cloud.toml").read_text().split("\n[jobs]\n", 1)[1].replace(
    "lease = 15.0", "lease = 4.0")
#: Lines a chatty job prints, one every 40 ms (about 6 s).
CHATTY_LINES = 150
#: Two kinds of the tests' own: one that prints many lines, one whose form
#: has a field of every kind a schema may give.
TEST_KINDS = f"""
[jobs.kinds.chatty]
description = "Prints {CHATTY_LINES} numbered lines."
command = ["sh", "-c", "i=1; while [ $i -le {CHATTY_LINES} ]; do echo \\"line $i of the log\\"; sleep 0.04; i=$((i + 1)); done"]
results = []

[jobs.kinds.echo]
description = "Says its parameters."
command = ["sh", "-c", "echo \\"name=$0 count=$1 ratio=$2 loud=$3 mode=$4\\"", "{{name}}", "{{count}}", "{{ratio}}", "{{loud}}", "{{mode}}"]
results = []

[jobs.kinds.echo.parameters]
type = "object"
additionalProperties = false
required = ["name"]
properties.name = {{ type = "string", pattern = "^[a-z-]+$", maxLength = 20, description = "Who to greet." }}
properties.count = {{ type = "integer", minimum = 1, maximum = 5, default = 2 }}
properties.ratio = {{ type = "number", default = 0.5 }}
properties.loud = {{ type = "boolean", default = true }}
properties.mode = {{ enum = ["fast", "slow"], default = "slow" }}
"""


class AmqpLink:
    """
    The link emulator between the edge and RabbitMQ: C{cut} resets every
    connection and stalls the link (reconnections then hang, as over a dead
    international link); C{restore} lets it carry bytes again.
    """

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.down = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.testing.linkemu", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--connect", f"tcp:127.0.0.1:{AMQP_PORT}", "--stats-interval-s", "1"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while "linkemu" not in log.read_text(errors="replace"):
            assert self.process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    def cut(self) -> None:
        assert not self.down
        self.process.send_signal(signal.SIGUSR2)  # stall: nothing passes, new connections hang
        time.sleep(0.2)
        self.process.send_signal(signal.SIGUSR1)  # and the connection there is, reset
        self.down = True

    def restore(self) -> None:
        assert self.down
        self.process.send_signal(signal.SIGUSR2)
        self.down = False

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Throttle:
    """
    The link emulator in front of the edge's web port, at C{rate} bytes a
    second per connection (0: as fast as it goes); SIGUSR1 resets every
    connection, SIGUSR2 toggles a stall.
    """

    def __init__(self, upstream: str, log: Path, rate: int = 0) -> None:
        self.port = free_port()
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay.testing.linkemu", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
             "--connect", f"tcp:127.0.0.1:{upstream.rsplit(':', 1)[1]}", "--rate-kbps", str(rate * 8 / 1000),
             "--stats-interval-s", "0.2"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while "linkemu" not in log.read_text(errors="replace"):
            assert self.process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    def counter(self, name: str) -> int:
        """The latest value of one of the emulator's counters, from its log."""
        found = re.findall(rf"{name}=(\d+)", self.log.read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def to_edge(self) -> int:
        return self.counter("bytes_to_upstream")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@dataclass
class World:
    edge_url: str
    s3: S3Server
    edge: Node
    cloud: Node
    link: AmqpLink
    root: Path
    users: dict[str, str] = field(default_factory=dict)  # name -> id

    def edge_db(self, query: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return read_db(self.root / "edge" / "edge.db", query, args)

    def cloud_db(self, query: str, args: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        return read_db(self.root / "cloud" / "cloud.db", query, args)


def _known_at_edge(root: Path, names: list[str]) -> bool:
    try:
        rows = read_db(root / "edge" / "edge.db", "SELECT name FROM replica_users")
    except sqlite3.OperationalError:
        return False  # not created yet
    return set(names) <= {r["name"] for r in rows}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    vhost = Vhost()
    vhost.create()
    s3 = start_moto(log_path=tmp_path / "moto.log")
    credentials = s3.write_credentials(tmp_path / "s3-credentials.toml")
    link = AmqpLink(tmp_path / "linkemu-amqp.log")
    edge_port = free_port()
    cloud_config = write_config(tmp_path / "cloud.toml", {
        "cloud": {"listen": f"tcp:{free_port()}:interface=127.0.0.1", "data_dir": str(tmp_path / "cloud")},
        "link": {"url": vhost.url(), "heartbeat": 2},
        "s3": {"bucket": s3.bucket, "endpoint_url": s3.endpoint, "addressing_style": "path",
               "credentials_file": str(credentials)},
    })
    with cloud_config.open("a") as config:
        config.write("\n" + JOBS_TOML + TEST_KINDS)  # work_dir is relative: under tmp_path
    edge_config = write_config(tmp_path / "edge.toml", {
        "edge": {"id": "browser", "listen": f"tcp:{edge_port}:interface=127.0.0.1",
                 "data_dir": str(tmp_path / "edge"), "web_dir": str(ROOT / "web")},
        "link": {"url": vhost.url(port=link.port), "heartbeat": 2},
    })
    env = {k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"}
    for name, password in PASSWORDS.items():
        subprocess.run(
            [str(Path(sys.executable).parent / "relay"), "user", "add", name, "--password-stdin",
             "--config", str(cloud_config)],
            input=password.encode(), check=True, capture_output=True, cwd=tmp_path, env=env,
        )
    cloud = Node("relay-cloud", cloud_config, tmp_path / "cloud.log", tmp_path).start()
    edge = Node("relay-edge", edge_config, tmp_path / "edge.log", tmp_path).start()
    built = World(f"http://127.0.0.1:{edge_port}", s3, edge, cloud, link, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not _known_at_edge(tmp_path, list(PASSWORDS)):
            assert edge.alive and cloud.alive, edge.log_text()[-3000:] + cloud.log_text()[-3000:]
            assert time.monotonic() < deadline, "the users never reached the edge's replica"
            time.sleep(0.2)
        built.users = {r["name"]: r["id"] for r in built.edge_db("SELECT id, name FROM replica_users")}
        yield built
    finally:
        edge.stop()
        cloud.stop()
        link.stop()
        s3.stop()
        vhost.delete()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Browser, problems: list[str] | None = None, **context: object) -> Page:
    """A page in a context of its own; page errors go to C{problems}."""
    page = browser.new_context(**context).new_page()  # type: ignore[arg-type]
    page.on("console", lambda m: print("console:", m.type, m.text))
    page.on("pageerror", lambda e: print("pageerror:", e))
    if problems is not None:
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: problems.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    return page


def log_in(page: Page, edge_url: str, name: str = "alice") -> None:
    page.goto(edge_url + "/")
    page.fill("#login-form input[name=name]", name)
    page.fill("#login-form input[name=password]", PASSWORDS[name])
    page.click("#login-form button[type=submit]")
    expect(page.locator("#workspace")).to_be_visible()


def shoot(page: Page, name: str) -> None:
    """A full-page screenshot in test-artifacts/, for a reviewer."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
