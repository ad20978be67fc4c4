"""
C{make run}'s deployment (C{tools/run_local.py}), started for real from a
directory of its own: the checkout's C{etc/edge.toml} and C{etc/cloud.toml}
on ports and a broker vhost of the test's, under a permissive umask.  Once
it says it is running, everything it wrote is the owner's only (data
directories 0700, databases, keys and credentials 0600), and SIGTERM stops
it cleanly.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

from relay.testing.transfer_world import Vhost
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def _deployment(directory: Path, link_url: str) -> int:
    """Write the checkout's configurations into C{directory}/etc with other ports; the edge's port."""
    edge_port, cloud_port, s3_port, receiver_port = free_port(), free_port(), free_port(), free_port()
    (directory / "etc").mkdir(parents=True)
    replacements = {
        "edge.toml": {
            "tcp:8080:": f"tcp:{edge_port}:",
            'web_dir = "web"': f'web_dir = "{ROOT / "web"}"',
        },
        "cloud.toml": {
            "tcp:8081:": f"tcp:{cloud_port}:",
            "http://127.0.0.1:9000": f"http://127.0.0.1:{s3_port}",
            "tcp:8090:": f"tcp:{receiver_port}:",
            "http://127.0.0.1:8090/": f"http://127.0.0.1:{receiver_port}/",
        },
    }
    for name, changes in replacements.items():
        text = (ROOT / "etc" / name).read_text()
        changes['url = "amqp://guest:guest@127.0.0.1:5672/%2F"'] = f'url = "{link_url}"'
        for old, new in changes.items():
            assert old in text, (name, old)
            text = text.replace(old, new)
        (directory / "etc" / name).write_text(text)
    return edge_port


def _open_to_others(root: Path) -> list[str]:
    return [
        f"{path.relative_to(root)} {stat.S_IMODE(path.lstat().st_mode):o}"
        for path in [root, *root.rglob("*")]
        if not path.is_symlink() and stat.S_IMODE(path.lstat().st_mode) & 0o077
    ]


def test_make_runs_deployment_leaves_nothing_open_to_others(tmp_path: Path) -> None:
    vhost = Vhost().create()
    try:
        edge_port = _deployment(tmp_path, vhost.url())
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tools" / "run_local.py"), "--dir", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=lambda: os.umask(0o022), start_new_session=True,
        )
        lines: list[str] = []
        running = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if "relay is running" in line:
                    running.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert running.wait(120), "".join(lines[-40:])
            assert f"open http://127.0.0.1:{edge_port}/" in "".join(lines)
            var = tmp_path / "var"
            for path, mode in [
                (var, 0o700),
                (var / "edge", 0o700),
                (var / "edge" / "edge.db", 0o600),
                (var / "edge" / "spool.key", 0o600),
                (var / "cloud", 0o700),
                (var / "cloud" / "cloud.db", 0o600),
                (var / "s3" / "credentials.toml", 0o600),
            ]:
                assert stat.S_IMODE(path.stat().st_mode) == mode, (path, oct(path.stat().st_mode))
            assert _open_to_others(var) == []
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
            reader.join(5)
        assert code == 0, "".join(lines[-40:])
    finally:
        vhost.delete()
