"""
Fixtures for the cloud's tests: a clock, and a cloud side on SQLite and,
where the test asks for both, on the real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from relay.testing.registry import CloudSide
from tests.postgresql_fixtures import postgresql_dsn, postgresql_server_database  # noqa: F401


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_764_000_000)
    return clock


@pytest.fixture(params=["sqlite", "postgresql"])
def cloud(request: pytest.FixtureRequest, clock: Clock, tmp_path: Path) -> Iterator[CloudSide]:
    """
    The registry on each database relay supports.
    """
    if request.param == "sqlite":
        target: Path | str = tmp_path / "cloud.db"
    else:
        target = request.getfixturevalue("postgresql_dsn")
    side = CloudSide(target, clock)
    yield side
    side.close()


@pytest.fixture
def sqlite_cloud(clock: Clock, tmp_path: Path) -> Iterator[CloudSide]:
    side = CloudSide(tmp_path / "cloud.db", clock)
    yield side
    side.close()
