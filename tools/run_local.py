"""
`make run`: a complete local deployment in one terminal.

Starts a local S3-compatible server (`rclone serve s3`, data under
var/objects, loopback only, credentials generated on first run), then
`twistd -n relay-cloud` and `twistd -n relay-edge` with the configurations
in etc/, waits until both answer /healthz, and prints the URL to open.
Ctrl-C (or SIGTERM) stops everything it started, newest first.  If any of
them exits on its own, the others are stopped too and the exit status is 1.

The addresses come from the configurations it starts (the edge's and the
cloud's C{listen}, the cloud's C{s3.endpoint_url}).  C{--dir DIR} runs a
deployment whose C{etc/} and C{var/} lie in C{DIR} instead of the checkout
(the tests start one that way, on ports of their own).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
VAR = Path("var")


def say(message: str) -> None:
    print(f"run: {message}", flush=True)


def s3_credentials() -> dict[str, str]:
    """
    The local S3 server's key pair, generated once and kept owner-only in
    var/s3/credentials.toml, where etc/cloud.toml points.
    """
    path = VAR / "s3" / "credentials.toml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        access, secret = "relay" + secrets.token_hex(6), secrets.token_urlsafe(30)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f'access_key_id = "{access}"\nsecret_access_key = "{secret}"\n')
        say(f"generated local S3 credentials in {path}")
    with path.open("rb") as f:
        return tomllib.load(f)


def read_config(side: str) -> dict[str, Any]:
    with open(f"etc/{side}.toml", "rb") as f:
        return tomllib.load(f)


def listen_port(description: str) -> int:
    """The port of a Twisted listening endpoint such as C{tcp:8080:interface=127.0.0.1}."""
    kind, port, *_ = description.split(":")
    if kind not in ("tcp", "ssl"):
        raise SystemExit(f"run: cannot tell the port of {description!r}")
    return int(port)


def port_open(address: tuple[str, int]) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(address) == 0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_for(what: str, ready, children: list[subprocess.Popen], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        for child in children:
            if child.poll() is not None:
                raise SystemExit(f"run: {child.args[0]} exited with status {child.returncode}")
        time.sleep(0.2)
    raise SystemExit(f"run: {what} did not become ready within {seconds:.0f} s")


def stop(children: list[subprocess.Popen]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 10
    for child in reversed(children):
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a complete local relay deployment.")
    parser.add_argument("--dir", type=Path, default=ROOT, help="where etc/ and var/ are (default: the checkout)")
    os.chdir(parser.parse_args(argv).dir)
    cloud, edge = read_config("cloud"), read_config("edge")
    s3 = urllib.parse.urlsplit(cloud["s3"]["endpoint_url"])
    s3_address = (s3.hostname or "127.0.0.1", s3.port or 80)
    cloud_health = f"http://127.0.0.1:{listen_port(cloud['cloud']['listen'])}/healthz"
    edge_port = listen_port(edge["edge"]["listen"])
    # Everything this deployment writes (databases, spool, keys, objects) is
    # the owner's only, whatever the shell's umask; the children inherit it.
    os.umask(0o077)
    VAR.mkdir(mode=0o700, exist_ok=True)
    os.chmod(VAR, 0o700)
    if port_open(s3_address):
        raise SystemExit(f"run: {s3_address[0]}:{s3_address[1]} is already in use; stop what listens there")
    creds = s3_credentials()
    bucket = VAR / "objects" / cloud["s3"]["bucket"]
    bucket.mkdir(parents=True, exist_ok=True)

    children: list[subprocess.Popen] = []

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        # rclone reads list flags from the environment as CSV: quote the pair.
        pair = f"{creds['access_key_id']},{creds['secret_access_key']}"
        env = dict(os.environ, RCLONE_AUTH_KEY=f'"{pair}"')
        children.append(
            subprocess.Popen(
                [str(BIN / "rclone"), "serve", "s3", "--addr", f"{s3_address[0]}:{s3_address[1]}",
                 "--force-path-style", "--config", "/dev/null", str(VAR / "objects")],
                env=env,
            )
        )
        wait_for("the local S3 server", lambda: port_open(s3_address), children)
        say(f"local S3 server on http://{s3_address[0]}:{s3_address[1]}/ (bucket {bucket.name!r} in {bucket.parent})")
        # The first start creates the first admin and prints a one-time
        # password ($RELAY_ADMIN_USER / $RELAY_ADMIN_PASSWORD choose them).
        subprocess.run(
            [str(BIN / "relay"), "admin", "bootstrap", "--config", "etc/cloud.toml"], check=True
        )
        for side in ("cloud", "edge"):
            children.append(
                subprocess.Popen(
                    [str(BIN / "twistd"), "-n", "--pidfile=", f"relay-{side}",
                     "--config", f"etc/{side}.toml"]
                )
            )
        wait_for("relay-cloud", lambda: healthy(cloud_health), children)
        wait_for("relay-edge", lambda: healthy(f"http://127.0.0.1:{edge_port}/healthz"), children)
        say(f"relay is running: open http://127.0.0.1:{edge_port}/  (Ctrl-C stops everything)")
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        failed = next(child for child in children if child.poll() is not None)
        say(f"{Path(failed.args[0]).name} {' '.join(failed.args[1:4])} exited with status {failed.returncode}; stopping")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        stop(children)


if __name__ == "__main__":
    sys.exit(main())
