"""
pytest fixtures for tests on the real PostgreSQL: a database created for
the test run with a unique name and dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from relay.testing.postgresql import Unavailable, required, temporary_database


@pytest.fixture(scope="session")
def postgresql_server_database() -> Iterator[str]:
    """
    One database for the whole run (tests that need a clean one use a
    schema of their own inside it, see L{postgresql_dsn}).
    """
    try:
        with temporary_database() as dsn:
            yield dsn
    except Unavailable as e:
        if required():
            pytest.fail(str(e))
        pytest.skip(str(e))


@pytest.fixture
def postgresql_dsn(postgresql_server_database: str) -> Iterator[str]:
    """
    A DSN whose connections work in a fresh, empty PostgreSQL schema.
    """
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgresql_server_database, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    yield f"{postgresql_server_database}?options=-csearch_path%3D{schema}"
    with psycopg.connect(postgresql_server_database, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
