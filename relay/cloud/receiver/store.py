"""
The receiver's tables in the cloud's database: the bearer tokens edges
hold (C{receiver_tokens}, only their sha256) and the partial uploads of
each transfer (C{receiver_partials}: which S3 parts each covers).  What a
partial holds in S3 is not stored here: after a restart ListParts says
(L{relay.cloud.receiver.partials}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Step 2 of the C{transfers} schema (L{relay.cloud.transfer_store}).
TABLES = """
CREATE TABLE receiver_tokens (
    token_hash TEXT PRIMARY KEY,
    transfer_id TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX receiver_tokens_transfer ON receiver_tokens (transfer_id);
CREATE TABLE receiver_partials (
    transfer_id TEXT NOT NULL,
    first_part INTEGER NOT NULL,
    last_part INTEGER NOT NULL,
    length BIGINT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (transfer_id, first_part)
);
"""


@dataclass(frozen=True)
class PartialRecord:
    """A partial upload: S3 parts C{first} to C{last} of a transfer."""

    transfer_id: str
    first: int
    last: int
    length: int


def replace_token(conn: Any, transfer_id: str, token_hash: str, expires: float) -> None:
    """The transfer's new token; every earlier one stops working."""
    conn.execute("DELETE FROM receiver_tokens WHERE transfer_id = ?", (transfer_id,))
    conn.execute("INSERT INTO receiver_tokens (token_hash, transfer_id, expires) VALUES (?, ?, ?)",
                 (token_hash, transfer_id, expires))


def token(conn: Any, token_hash: str) -> tuple[str, float] | None:
    row = conn.execute("SELECT transfer_id, expires FROM receiver_tokens WHERE token_hash = ?",
                       (token_hash,)).fetchone()
    return None if row is None else (str(row[0]), float(row[1]))


def forget_transfer(conn: Any, transfer_id: str) -> None:
    """The transfer is over: its token and partial uploads go."""
    conn.execute("DELETE FROM receiver_tokens WHERE transfer_id = ?", (transfer_id,))
    conn.execute("DELETE FROM receiver_partials WHERE transfer_id = ?", (transfer_id,))


def add_partial(conn: Any, record: PartialRecord, now: float) -> PartialRecord:
    """
    Record a partial upload; one that exists already for the same first
    part is returned as it is (the caller compares).
    """
    existing = partial(conn, record.transfer_id, record.first)
    if existing is not None:
        return existing
    conn.execute(
        "INSERT INTO receiver_partials (transfer_id, first_part, last_part, length, created) "
        "VALUES (?, ?, ?, ?, ?)",
        (record.transfer_id, record.first, record.last, record.length, now),
    )
    return record


def partial(conn: Any, transfer_id: str, first: int) -> PartialRecord | None:
    row = conn.execute(
        "SELECT last_part, length FROM receiver_partials WHERE transfer_id = ? AND first_part = ?",
        (transfer_id, first),
    ).fetchone()
    return None if row is None else PartialRecord(transfer_id, first, int(row[0]), int(row[1]))


def remove_partial(conn: Any, transfer_id: str, first: int) -> None:
    conn.execute("DELETE FROM receiver_partials WHERE transfer_id = ? AND first_part = ?",
                 (transfer_id, first))
