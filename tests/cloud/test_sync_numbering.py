"""
Events are numbered after their transaction commits (L{sync.sequence}), so
that the registry's writers share no counter row: on PostgreSQL two
writers in open transactions neither wait for each other nor abort each
other, a transaction that commits later is numbered later, the numbers
have no gap, and a command's answer is still found by its number, in the
log and once its event was pruned.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from relay.cloud import sync
from relay.cloud.registry import schema as registry_schema
from relay.db import connect, migrate, open_connection
from relay.link.envelope import Envelope
from relay.replication import COMMAND_APPLIED
from relay.testing.registry import CloudSide
from relay.testing.sync import FakeOutbox


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def pg_cloud(clock: Clock, postgresql_dsn: str) -> Iterator[CloudSide]:
    side = CloudSide(postgresql_dsn, clock)
    yield side
    side.close()


def numbered(cloud: CloudSide) -> list[tuple[int, str]]:
    return [(e["seq"], e["data"]["command_id"]) for e in cloud.run(sync.events, 0, 10**9)]


def test_two_open_writers_neither_wait_nor_conflict_and_are_numbered_as_they_commit(
    pg_cloud: CloudSide, postgresql_dsn: str,
) -> None:
    first, second = open_connection(postgresql_dsn), open_connection(postgresql_dsn)
    try:
        for conn in (first, second):
            conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
            # A counter row both update would make the second wait for the
            # first's commit: here it would fail after 2 s instead.
            conn.execute("SET LOCAL lock_timeout = '2s'")
        early, late = new_id(), new_id()
        pg_cloud.log.append(first, COMMAND_APPLIED, {"command_id": early, "edge": "e1"}, early)
        pg_cloud.log.append(second, COMMAND_APPLIED, {"command_id": late, "edge": "e1"}, late)
        second.execute("COMMIT")
        # The first is still open: only the second's event is numbered.
        assert pg_cloud.run(sync.sequence) == 1
        assert numbered(pg_cloud) == [(1, late)]
        first.execute("COMMIT")
        assert pg_cloud.run(sync.sequence) == 2
        assert numbered(pg_cloud) == [(1, late), (2, early)]
        assert pg_cloud.run(sync.sequence) == 2, "nothing is numbered twice"
    finally:
        first.close()
        second.close()


def test_events_of_a_transaction_are_numbered_together_in_their_order(cloud: CloudSide) -> None:
    ids = [new_id() for _ in range(3)]

    def three(conn: Any) -> None:
        for command_id in ids:
            cloud.log.append(conn, COMMAND_APPLIED, {"command_id": command_id, "edge": "e1"}, command_id)

    cloud.run(three)
    assert cloud.run(sync.head) == 0, "not numbered before sequence"
    assert cloud.run(sync.sequence) == 3
    assert numbered(cloud) == [(1, ids[0]), (2, ids[1]), (3, ids[2])]


def test_more_events_than_a_batch_are_numbered_without_a_gap(cloud: CloudSide) -> None:
    count = sync.SEQUENCE_BATCH + 5

    def many(conn: Any) -> None:
        for _ in range(count):
            command_id = new_id()
            cloud.log.append(conn, COMMAND_APPLIED, {"command_id": command_id, "edge": "e1"}, command_id)

    cloud.run(many)
    assert cloud.run(sync.sequence) == count
    assert [seq for seq, _ in numbered(cloud)] == list(range(1, count + 1))


def snapshot_outcomes(cloud: CloudSide, after: int, pending: list[str]) -> list[dict[str, Any]]:
    cloud.run(lambda c: cloud.responder.send_snapshot(c, "e1", pending, after=after))
    (first,) = [m for _, m in cloud.run(FakeOutbox.take) if m.type == "sync.snapshot" and m.body["part"] == 1]
    return list(first.body["outcomes"])


def test_a_command_answer_is_found_by_its_number_before_and_after_its_event_is_pruned(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    command_id = new_id()
    cloud.inbox.deliver(Envelope(
        type="project.create", source="edge:e1", time=cloud.clock.seconds(),
        body={"command_id": command_id, "actor": {"user_id": alice["id"], "via": "session"},
              "project_id": new_id(), "name": "Apollo", "description": ""},
    ))
    answer = {"command_id": command_id, "status": "applied", "reason": None, "code": None}
    # The snapshot numbers what it shows: the answer comes with it.
    assert snapshot_outcomes(cloud, 0, []) == [answer]
    (event,) = [e for e in cloud.run(sync.events, 0, 10**9) if e["kind"] == "command.applied"]
    assert snapshot_outcomes(cloud, event["seq"], []) == [], "not after its own number"
    assert snapshot_outcomes(cloud, event["seq"], [command_id]) == [answer], "asked for by id"
    # Pruned out of the log, the command keeps its number.
    cloud.run(sync.prune, 0)
    assert cloud.run(lambda c: c.execute("SELECT kind FROM sync_log").fetchall()) == []
    seq = cloud.run(lambda c: c.execute("SELECT seq FROM commands WHERE command_id = ?", (command_id,)).fetchone()[0])
    assert seq == event["seq"]
    assert snapshot_outcomes(cloud, event["seq"] - 1, []) == [answer]
    assert snapshot_outcomes(cloud, event["seq"], []) == []



def applied(cloud: CloudSide, conn: Any) -> str:
    command_id = new_id()
    cloud.log.append(conn, COMMAND_APPLIED, {"command_id": command_id, "edge": "e1"}, command_id)
    return command_id


def test_a_writer_that_read_the_active_edges_survives_numbering_and_publishing(
    pg_cloud: CloudSide, postgresql_dsn: str,
) -> None:
    """
    A job's live log and its finish read the active edges and log events.
    Meanwhile one process numbers events (it read the pending events, not
    the writer's) and another records how far it sent the edges, committing
    first.  Had the writer read what that record changed, the writer would
    be the pivot between the two on PostgreSQL, and aborted.
    """
    hello = Envelope(type="sync.hello", source="edge:e1", time=0.0,
                     body={"edge": "e1", "applied": 0, "pending": [], "snapshot": True})
    pg_cloud.run(pg_cloud.responder.on_hello, hello)
    pg_cloud.add_user("alice", "a long password")
    pg_cloud.run(sync.sequence)
    pg_cloud.run(lambda c: applied(pg_cloud, c))  # pending, for the numbering below
    writer, numbering = open_connection(postgresql_dsn), open_connection(postgresql_dsn)
    try:
        writer.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        assert sync.active_edges(writer, 0.0) == ["e1"]
        mine = applied(pg_cloud, writer)
        numbering.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        assert sync.sequence(numbering) == 4
        # Another process publishes what was numbered before, and commits.
        assert pg_cloud.run(pg_cloud.publisher.publish) == 1
        numbering.execute("COMMIT")
        writer.execute("COMMIT")
    finally:
        writer.close()
        numbering.close()
    assert pg_cloud.publish() == 1, "events 4 and 5, to e1"
    assert [e["sent_upto"] for e in pg_cloud.run(sync.edges)] == [5]
    last = pg_cloud.run(sync.events, 4, 5)
    assert [(e["seq"], e["command_id"]) for e in last] == [(5, mine)]


def test_an_existing_log_carries_on_after_the_migration(tmp_path: Path, clock: Clock) -> None:
    """
    A registry from before: its numbered events and commands stay as they
    are, the publisher's progress moves to sync_sent, and new events are
    numbered after the old head.
    """
    conn = connect(tmp_path / "cloud.db")
    migrate(conn, registry_schema.SCHEMA)
    migrate(conn, sync.SCHEMA, upto=1)
    conn.execute("UPDATE sync_counter SET value = 7 WHERE name = 'head'")
    conn.execute("INSERT INTO sync_log (seq, kind, data, command_id, logged_at) VALUES "
                 "(7, 'command.applied', '{}', 'old', 0)")
    conn.execute("INSERT INTO commands (command_id, edge, type, user_id, status, seq, decided_at) "
                 "VALUES ('old', 'e1', 'project.create', 'u', 'applied', 7, 0)")
    conn.execute("INSERT INTO sync_edges (edge, sent_upto, first_seen, last_seen) VALUES ('e1', 6, 0, 0)")
    conn.close()
    cloud = CloudSide(tmp_path / "cloud.db", clock)
    try:
        assert [(e["edge"], e["sent_upto"]) for e in cloud.run(sync.edges)] == [("e1", 6)]
        assert [tuple(r) for r in cloud.run(lambda c: c.execute("SELECT edge, sent_upto FROM sync_sent").fetchall())] == [
            ("e1", 6)]
        cloud.add_user("alice", "a long password")
        assert cloud.run(sync.sequence) == 10
        assert [e["seq"] for e in cloud.run(sync.events, 0, 10**9)] == [7, 8, 9, 10]
        assert [o["command_id"] for o in snapshot_outcomes(cloud, 6, [])] == ["old"]
    finally:
        cloud.close()
