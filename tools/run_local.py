"""
`make run`: a complete local deployment in one terminal.

Starts a local S3-compatible server (`rclone serve s3`, data under
var/objects, loopback only, credentials generated on first run), then
`twistd -n relay-cloud` and `twistd -n relay-edge` with the configurations
in etc/, waits until both answer /healthz, and prints the URL to open.
Ctrl-C (or SIGTERM) stops everything it started, newest first.  If any of
them exits on its own, the others are stopped too and the exit status is 1.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
VAR = ROOT / "var"
S3_ADDRESS = ("127.0.0.1", 9000)


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
        say(f"generated local S3 credentials in {path.relative_to(ROOT)}")
    with path.open("rb") as f:
        return tomllib.load(f)


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


def main() -> int:
    os.chdir(ROOT)
    # Everything this deployment writes (databases, spool, keys, objects) is
    # the owner's only, whatever the shell's umask; the children inherit it.
    os.umask(0o077)
    VAR.mkdir(mode=0o700, exist_ok=True)
    os.chmod(VAR, 0o700)
    if port_open(S3_ADDRESS):
        raise SystemExit(f"run: {S3_ADDRESS[0]}:{S3_ADDRESS[1]} is already in use; stop what listens there")
    creds = s3_credentials()
    bucket = VAR / "objects" / "relay"
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
                [str(BIN / "rclone"), "serve", "s3", "--addr", f"{S3_ADDRESS[0]}:{S3_ADDRESS[1]}",
                 "--force-path-style", "--config", "/dev/null", str(VAR / "objects")],
                env=env,
            )
        )
        wait_for("the local S3 server", lambda: port_open(S3_ADDRESS), children)
        say(f"local S3 server on http://{S3_ADDRESS[0]}:{S3_ADDRESS[1]}/ (bucket 'relay' in var/objects)")
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
        wait_for("relay-cloud", lambda: healthy("http://127.0.0.1:8081/healthz"), children)
        wait_for("relay-edge", lambda: healthy("http://127.0.0.1:8080/healthz"), children)
        say("relay is running: open http://127.0.0.1:8080/  (Ctrl-C stops everything)")
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
