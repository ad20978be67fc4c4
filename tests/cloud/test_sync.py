"""
The event log's way to the edges: a fresh edge converges from a snapshot
(also with 10,000 files), an edge that missed a long run of changes
catches up by range, live events reach every active edge in bounded
messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from relay.cloud import sync
from relay.link.envelope import TO_CLOUD, to_edge
from relay.sync_messages import MAX_EVENTS_PER_MESSAGE, MAX_ROWS_PER_PART
from relay.testing.registry import CloudSide
from relay.testing.sync import FakeOutbox
from tests.cloud.world import World


@pytest.fixture
def world(tmp_path: Path, clock: Clock) -> Iterator[World]:
    w = World(tmp_path, clock)
    yield w
    w.close()


def add_files(cloud: CloudSide, count: int) -> str:
    user = cloud.add_user("alice", "a long password")
    home = cloud.default_project(user["id"])

    def many(conn: Any) -> None:
        for i in range(count):
            cloud.registry.put_file(conn, home, f"file-{i:05}.bin", i, sha256=f"{i:064x}", object_key=f"o/{i}")

    cloud.run(many)
    return home


def test_fresh_edge_converges_from_a_snapshot_of_10000_files(world: World) -> None:
    add_files(world.cloud, 10_000)
    edge = world.edge("fresh")
    edge.tick(hello=True)
    world.settle()
    assert edge.dump() == world.cloud.dump()
    assert len(edge.dump()["files"]) == 10_000
    rows = sum(len(rows) for rows in world.cloud.dump().values())
    assert world.sent_to("fresh", "sync.snapshot") >= -(-rows // MAX_ROWS_PER_PART)
    assert world.sent_to("fresh", "sync.events") == 0, "a fresh edge is not replayed the log"
    position = edge.db.run_now(lambda c: c.execute("SELECT applied, synced FROM replica_sync").fetchone())
    assert tuple(position) == (world.cloud.run(sync.head), 1)


def test_snapshot_parts_are_small(world: World) -> None:
    add_files(world.cloud, 1200)
    world.cloud.run(world.cloud.responder.send_snapshot, "x", [])
    parts = [m for q, m in world.cloud.db.run_now(lambda c: FakeOutbox.peek(c))]
    assert len(parts) == 3
    assert all(len(m.to_bytes()) < 256 * 1024 for m in parts)
    assert {m.body["upto"] for m in parts} == {world.cloud.run(sync.head)}


def test_offline_edge_catches_up_by_range(world: World) -> None:
    """
    An edge whose queue lost a long run of events (2,000) asks for them by
    number when it restarts, and gets events, not a snapshot.
    """
    cloud = world.cloud
    edge = world.edge("far")
    user = cloud.add_user("alice", "a long password")
    edge.tick(hello=True)
    world.settle()
    assert world.sent_to("far", "sync.snapshot") == 1

    world.link.lose(to_edge("far"))
    home = cloud.default_project(user["id"])
    for i in range(400):
        cloud.run(lambda c, i=i: cloud.registry.put_file(c, home, f"f{i}", i))
        cloud.run(cloud.registry.rename_project, home, f"Home {i}")
        cloud.publish()
    cloud.run(lambda c: cloud.registry.set_password(c, user["id"], "$scrypt$changed"))
    cloud.publish()
    world.link.collect()
    assert world.link.lost >= 801 // MAX_EVENTS_PER_MESSAGE
    assert edge.dump() != cloud.dump()

    world.link.lose(to_edge("far"), False)
    edge.restart()
    edge.tick(hello=True)
    world.settle()
    assert edge.dump() == cloud.dump()
    assert world.sent_to("far", "sync.snapshot") == 1, "caught up by range, not by a new snapshot"
    ranges = cloud.run(lambda c: c.execute("SELECT ranges FROM sync_edges WHERE edge = 'far'").fetchone()[0])
    assert ranges >= 1


def test_a_gap_is_noticed_on_the_next_event(world: World) -> None:
    """
    Without a restart: the first event after the lost ones shows the gap,
    and the edge asks for exactly what is missing.
    """
    cloud = world.cloud
    edge = world.edge("e1")
    user = cloud.add_user("alice", "a long password")
    edge.tick(hello=True)
    world.settle()
    world.link.lose(to_edge("e1"))
    cloud.run(cloud.registry.set_admin, user["id"], True)
    cloud.publish()
    world.link.collect()
    world.link.lose(to_edge("e1"), False)
    cloud.run(cloud.registry.set_admin, user["id"], False)
    cloud.run(cloud.registry.set_admin, user["id"], True)
    cloud.publish()
    world.link.collect()
    while world.link.in_flight and world.link.in_flight[0][0] != TO_CLOUD:
        world.link.deliver_one()
    requests = [m.body for q, m in edge.db.run_now(lambda c: FakeOutbox.peek(c))
                if m.type == "sync.range"]
    head = cloud.run(sync.head)
    assert requests == [{"edge": "e1", "after": head - 3, "upto": head - 2}]
    world.settle()
    assert edge.dump() == cloud.dump()


def test_an_edge_older_than_the_log_gets_a_snapshot(world: World) -> None:
    cloud = world.cloud
    edge = world.edge("old")
    user = cloud.add_user("alice", "a long password")
    edge.tick(hello=True)
    world.settle()
    world.link.lose(to_edge("old"))
    for flag in (True, False, True):
        cloud.run(cloud.registry.set_admin, user["id"], flag)
    cloud.publish()
    world.link.collect()
    cloud.run(sync.prune, 1)
    world.link.lose(to_edge("old"), False)
    edge.tick(hello=True)
    world.settle()
    assert edge.dump() == cloud.dump()
    assert world.sent_to("old", "sync.snapshot") == 2


def test_publisher_batches_and_skips_inactive_edges(world: World) -> None:
    cloud = world.cloud
    for edge_id in ("active", "gone"):
        world.edge(edge_id).tick(hello=True)
    world.settle()
    world.edges.pop("gone").close()  # it stops saying hello
    world.link.detach(to_edge("gone"))
    world.clock.advance(8 * 86400)
    world.edges["active"].tick(hello=True)
    world.settle()
    add_files(cloud, 1100)
    messages = []
    while cloud.publish():
        messages += cloud.db.run_now(lambda c: FakeOutbox.take(c))
    queues = {q for q, _ in messages}
    assert queues == {to_edge("active")}
    assert max(len(m.body["events"]) for _, m in messages) == MAX_EVENTS_PER_MESSAGE
    seqs = [e["seq"] for _, m in messages for e in m.body["events"]]
    assert seqs[-1] == cloud.run(sync.head)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "consecutive, each once"
    assert len(seqs) >= 1100


def test_fresh_edge_on_an_empty_registry_is_synced(world: World) -> None:
    edge = world.edge("first")
    edge.tick(hello=True)
    world.settle()
    synced = edge.db.run_now(lambda c: c.execute("SELECT synced FROM replica_sync").fetchone()[0])
    assert synced == 1
    assert edge.dump() == world.cloud.dump()


def test_sync_on_postgresql(tmp_path: Path, clock: Clock, postgresql_dsn: str) -> None:
    """
    The whole path with the registry on the real PostgreSQL.
    """
    w = World(tmp_path, clock, cloud_target=postgresql_dsn)
    try:
        add_files(w.cloud, 600)
        edge = w.edge("pg")
        edge.tick(hello=True)
        w.settle()
        w.cloud.run(w.cloud.registry.rename_project, w.cloud.dump()["projects"][0]["id"], "Renamed")
        w.settle()
        assert edge.dump() == w.cloud.dump()
    finally:
        w.close()
