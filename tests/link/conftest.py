"""Fixtures and settings for relay.link's tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # txAMQP 0.8.2 (pinned) uses returnValue everywhere; that noise hides real warnings.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:twisted.internet.defer.returnValue was deprecated:DeprecationWarning",
    )
