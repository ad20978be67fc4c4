"""
Fixtures every test directory may use: the repository's paths, free
loopback ports, and subprocess helpers for running relay's processes.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def twistd() -> list[str]:
    """
    The command that runs twistd from the test's virtual env.
    """
    return [str(BIN / "twistd"), "-n", "--pidfile="]


@pytest.fixture
def clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RELAY_CONFIG", None)
    return env


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Every test runs in its own empty working directory, so relative paths
    (trial's mktemp, a default data_dir) never land in the work tree.
    """
    monkeypatch.chdir(tmp_path)
