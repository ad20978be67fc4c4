"""Fixtures and settings for relay.link's tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from ._broker import VHOST


def pytest_configure(config: pytest.Config) -> None:
    # txAMQP 0.8.2 (pinned) uses returnValue everywhere; that noise hides real warnings.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning",
    )


@pytest.fixture(scope="session", autouse=True)
def _link_vhost() -> Iterator[None]:
    """The link tests' own vhost (L{VHOST}), removed with its queues at the end."""

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", "-s", *args], check=True, capture_output=True, timeout=60)

    ctl("add_vhost", VHOST)
    ctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    yield
    ctl("delete_vhost", VHOST)
