"""
A throw-away PostgreSQL database for tests: created with a unique name on
the server named by C{$RELAY_TEST_POSTGRESQL} (default: the local server on
127.0.0.1, user C{postgres}), dropped afterwards.

Tests that need one skip when no server answers, unless
C{$RELAY_REQUIRE_POSTGRESQL} is set (CI sets it where PostgreSQL runs), in
which case they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


class Unavailable(Exception):
    """
    No PostgreSQL server answered.
    """


def server_dsn() -> str:
    return os.environ.get("RELAY_TEST_POSTGRESQL", DEFAULT_SERVER)


def required() -> bool:
    return bool(os.environ.get("RELAY_REQUIRE_POSTGRESQL"))


def with_database(dsn: str, name: str, query: str = "") -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, query, ""))


@contextmanager
def temporary_database(prefix: str = "relay_test") -> Iterator[str]:
    """
    Create a uniquely named database; yield its DSN; drop it (closing any
    session still connected).
    """
    import psycopg

    admin_dsn = server_dsn()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        raise Unavailable(f"no PostgreSQL at {admin_dsn}: {e}") from None
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(admin_dsn, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()
