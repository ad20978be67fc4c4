"""
relay's two processes as ops run them: twistd plugins and .tac files,
started as subprocesses on free loopback ports, checked over HTTP, stopped
with SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.testing.transfer_world import Vhost

from .conftest import ROOT, free_port

SAMPLE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? -?[0-9.e+-]+$")


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["content-type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def wait_until_up(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            get(url)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def assert_prometheus(text: str) -> None:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines
    for line in lines:
        assert SAMPLE.match(line), line


def stop(process: subprocess.Popen) -> tuple[int, float]:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=30)
    return status, time.monotonic() - started


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True, scope="module")
def broker() -> Iterator[None]:
    # A vhost of these tests' own: the processes must not consume (and so
    # take away) the messages of a deployment on this machine's broker.
    global BROKER_URL
    vhost = Vhost().create()
    BROKER_URL = vhost.url()
    yield
    vhost.delete()


BROKER_URL = ""


def config(tmp_path: Path, side: str, port: int) -> Path:
    path = tmp_path / f"{side}.toml"
    path.write_text(
        f'[{side}]\nlisten = "tcp:{port}:interface=127.0.0.1"\ndata_dir = "{tmp_path / side}"\n'
        f'[link]\nurl = "{BROKER_URL}"\n'
    )
    return path


def test_both_processes_serve_health_and_stop_on_sigterm(
    tmp_path: Path, twistd: list[str], clean_env: dict[str, str], processes: list[subprocess.Popen]
) -> None:
    ports = {"edge": free_port(), "cloud": free_port()}
    for side, port in ports.items():
        processes.append(
            subprocess.Popen(
                [*twistd, f"relay-{side}", "--config", str(config(tmp_path, side, port))],
                cwd=tmp_path,
                env=clean_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for (side, port), process in zip(ports.items(), processes, strict=True):
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/healthz", process)
        status, kind, body = get(base + "/healthz")
        assert status == 200
        assert kind == "application/json"
        report = json.loads(body)
        assert report["role"] == side
        assert report["ok"] is True
        assert report["version"]
        assert report["uptime"] >= 0
        # The AMQP link comes up on its own (RabbitMQ runs for the tests).
        deadline = time.monotonic() + 15
        while not report["link"]["up"] and time.monotonic() < deadline:
            time.sleep(0.1)
            report = json.loads(get(base + "/healthz")[2])
        assert report["link"]["up"] is True, report
        outbox = report["link"]["outbox"]
        assert outbox["state"] == "running"
        assert {"depth", "in_flight", "oldest_age"} <= set(outbox)
        assert report["link"]["dead_letters"] == 0
        status, kind, body = get(base + "/metrics")
        assert status == 200
        assert kind.startswith("text/plain; version=0.0.4")
        assert_prometheus(body.decode())
        assert "relay_link_up 1" in body.decode()
        assert "relay_outbox_depth " in body.decode()
        assert (tmp_path / side / f"{side}.db").exists()
    for process in processes:
        status, took = stop(process)
        assert status == 0, process.communicate()
        assert took < 5


def test_command_line_overrides_the_file(
    tmp_path: Path, twistd: list[str], clean_env: dict[str, str], processes: list[subprocess.Popen]
) -> None:
    port = free_port()
    path = config(tmp_path, "edge", free_port())
    process = subprocess.Popen(
        [*twistd, "relay-edge", "--config", str(path), "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--data-dir", str(tmp_path / "elsewhere")],
        cwd=tmp_path,
        env=clean_env,
    )
    processes.append(process)
    wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
    assert (tmp_path / "elsewhere" / "edge.db").exists()
    assert stop(process)[0] == 0


@pytest.mark.parametrize("side", ["edge", "cloud"])
def test_sigterm_right_after_start_stops_promptly(
    tmp_path: Path, twistd: list[str], clean_env: dict[str, str], processes: list[subprocess.Popen], side: str
) -> None:
    # Stopping while startup work (upload recovery, the AMQP handshake) is
    # still running once hung: the database closed under it.
    for attempt in range(3):
        port = free_port()
        (tmp_path / str(attempt)).mkdir()
        path = config(tmp_path / str(attempt), side, port)
        process = subprocess.Popen([*twistd, f"relay-{side}", "--config", str(path)], cwd=tmp_path, env=clean_env)
        processes.append(process)
        wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
        status, took = stop(process)
        assert status == 0
        assert took < 5


@pytest.mark.parametrize("side", ["edge", "cloud"])
def test_tac_builds_the_same_tree(
    tmp_path: Path, twistd: list[str], clean_env: dict[str, str], processes: list[subprocess.Popen], side: str
) -> None:
    """
    twistd -ny tac/<side>.tac reads $RELAY_CONFIG; [log] format = "json"
    makes every log line a JSON object.
    """
    port = free_port()
    path = config(tmp_path, side, port)
    path.write_text(path.read_text() + '\n[log]\nformat = "json"\n')
    # Output to files, not pipes: nobody reads a pipe until the process
    # has stopped, and a full one would block its logging.
    out_path, err_path = tmp_path / "out.log", tmp_path / "err.log"
    with out_path.open("w") as out, err_path.open("w") as err:
        process = subprocess.Popen(
            [*twistd, "-y", str(ROOT / "tac" / f"{side}.tac")],
            cwd=tmp_path,
            env=dict(clean_env, RELAY_CONFIG=str(path)),
            stdout=out,
            stderr=err,
        )
    processes.append(process)
    wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
    assert json.loads(get(f"http://127.0.0.1:{port}/healthz")[2])["role"] == side
    assert stop(process)[0] == 0
    events = [json.loads(line) for line in out_path.read_text().splitlines() if line.strip()]
    assert events, err_path.read_text()
    assert all("log_namespace" in event for event in events)


def test_json_logger_for_the_plugin(
    tmp_path: Path, twistd: list[str], clean_env: dict[str, str], processes: list[subprocess.Popen]
) -> None:
    port = free_port()
    [executable, *options] = twistd
    out_path = tmp_path / "out.log"
    with out_path.open("w") as out:
        process = subprocess.Popen(
            [executable, *options, "--logger", "relay.logs.json", "relay-edge", "--config",
             str(config(tmp_path, "edge", port))],
            cwd=tmp_path,
            env=clean_env,
            stdout=out,
        )
    processes.append(process)
    wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
    assert stop(process)[0] == 0
    lines = [line for line in out_path.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        json.loads(line)


@pytest.mark.parametrize("side", ["edge", "cloud"])
def test_json_log_format_for_the_plugin(
    tmp_path: Path, twistd: list[str], clean_env: dict[str, str], processes: list[subprocess.Popen], side: str
) -> None:
    """
    twistd relay-<side> (no --logger) with [log] format = "json" in the
    file: every line it writes is a JSON object.
    """
    port = free_port()
    path = config(tmp_path, side, port)
    path.write_text(path.read_text() + '\n[log]\nformat = "json"\n')
    out_path = tmp_path / "out.log"
    with out_path.open("w") as out:
        process = subprocess.Popen(
            [*twistd, f"relay-{side}", "--config", str(path)], cwd=tmp_path, env=clean_env, stdout=out
        )
    processes.append(process)
    wait_until_up(f"http://127.0.0.1:{port}/healthz", process)
    assert stop(process)[0] == 0
    events = [json.loads(line) for line in out_path.read_text().splitlines() if line.strip()]
    assert events
    assert all("log_namespace" in event for event in events)
    assert any(event.get("log_namespace", "").startswith("relay.") for event in events)
