"""
The edge's replica: applying the cloud's events idempotently and in order,
noticing gaps and asking for exactly what is missing, installing snapshots,
and the optimistic overlay of the edge's own commands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from relay.cloud import sync
from relay.edge.auth import Principal
from relay.edge.replica import jobs_for, notices_for, position, projects_for
from relay.edge.replica.pending import dismiss
from relay.link.envelope import Envelope
from relay.permissions import Refused
from relay.testing.registry import RENDER, CloudSide, EdgeSide
from relay.testing.sync import FakeOutbox


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_764_000_000)
    return clock


@pytest.fixture
def cloud(tmp_path: Path, clock: Clock) -> Iterator[CloudSide]:
    side = CloudSide(tmp_path / "cloud.db", clock)
    yield side
    side.close()


@pytest.fixture
def edge(tmp_path: Path, clock: Clock) -> Iterator[EdgeSide]:
    side = EdgeSide("e1", tmp_path / "edge.db", clock)
    yield side
    side.close()


def events_message(cloud: CloudSide, after: int, upto: int, head: int | None = None) -> Envelope:
    numbered = cloud.run(sync.sequence)
    events = cloud.run(sync.events, after, upto)
    return Envelope(type="sync.events", source="cloud", time=0.0,
                    body={"events": events, "head": head if head is not None else numbered})


def snapshot_messages(cloud: CloudSide, edge_id: str = "e1", pending: list[str] = ()) -> list[Envelope]:  # type: ignore[assignment]
    cloud.run(cloud.responder.send_snapshot, edge_id, list(pending))
    return [m for _, m in cloud.run(FakeOutbox.take) if m.type == "sync.snapshot"]


def sent(edge: EdgeSide) -> list[Envelope]:
    return [m for _, m in edge.db.run_now(FakeOutbox.take)]


def synced(edge: EdgeSide, cloud: CloudSide) -> None:
    """
    Bring a fresh edge up (hello, snapshot) with the cloud as it is now.
    """
    edge.tick(hello=True)
    for message in snapshot_messages(cloud):
        edge.inbox.deliver(message)
    sent(edge)


def test_events_apply_in_order_and_once(cloud: CloudSide, edge: EdgeSide) -> None:
    synced(edge, cloud)
    cloud.add_user("alice", "a long password")
    message = events_message(cloud, 0, 3)
    edge.inbox.deliver(message)
    edge.inbox.deliver(Envelope(type=message.type, source="cloud", time=0.0, body=message.body))
    assert edge.dump() == cloud.dump()
    assert edge.db.run_now(position).applied == 3
    assert sent(edge) == []


def test_out_of_order_events_wait_and_a_gap_is_asked_for(cloud: CloudSide, edge: EdgeSide, clock: Clock) -> None:
    synced(edge, cloud)
    cloud.add_user("alice", "a long password")  # events 1..3
    cloud.add_user("bob", "a long password")  # events 4..6
    edge.inbox.deliver(events_message(cloud, 4, 6))
    assert edge.db.run_now(position).applied == 0
    (request,) = sent(edge)
    assert (request.type, request.body) == ("sync.range", {"edge": "e1", "after": 0, "upto": 4})
    # Again, soon: not asked twice.
    edge.inbox.deliver(events_message(cloud, 5, 6))
    assert sent(edge) == []
    # Still missing after a while: asked again.
    clock.advance(31)
    assert edge.tick()
    assert [m.body for m in sent(edge)] == [{"edge": "e1", "after": 0, "upto": 4}]
    edge.inbox.deliver(events_message(cloud, 0, 4))
    assert edge.db.run_now(position).applied == 6
    assert edge.dump() == cloud.dump()
    assert edge.db.run_now(lambda c: c.execute("SELECT count(*) FROM replica_buffer").fetchone()[0]) == 0


def test_a_head_ahead_with_no_progress_is_asked_for(cloud: CloudSide, edge: EdgeSide, clock: Clock) -> None:
    synced(edge, cloud)
    cloud.add_user("alice", "a long password")
    edge.inbox.deliver(events_message(cloud, 0, 1, head=3))
    assert sent(edge) == [], "the rest may be on its way"
    clock.advance(31)
    edge.tick()
    assert [(m.type, m.body) for m in sent(edge)] == [("sync.range", {"edge": "e1", "after": 1, "upto": 3})]


def test_a_fresh_edge_waits_for_its_snapshot(cloud: CloudSide, edge: EdgeSide) -> None:
    cloud.add_user("alice", "a long password")
    parts = snapshot_messages(cloud)
    cloud.add_user("bob", "a long password")
    edge.inbox.deliver(events_message(cloud, 3, 6))
    assert sent(edge) == [], "no range requests before the snapshot"
    assert edge.dump()["users"] == []
    for part in parts:
        edge.inbox.deliver(part)
    assert edge.dump() == cloud.dump()
    assert edge.db.run_now(position).applied == 6


def test_snapshot_parts_in_any_order_and_twice(cloud: CloudSide, edge: EdgeSide) -> None:
    user = cloud.add_user("alice", "a long password")
    home = cloud.default_project(user["id"])
    cloud.run(lambda c: [cloud.registry.put_file(c, home, f"f{i}", i) for i in range(1200)])
    parts = snapshot_messages(cloud)
    assert len(parts) == 3
    for part in (parts[2], parts[0], parts[2]):
        edge.inbox.deliver(part)
    assert edge.dump()["files"] == []
    edge.inbox.deliver(parts[1])
    assert edge.dump() == cloud.dump()
    edge.inbox.deliver(parts[0])  # late duplicate of an installed snapshot: ignored
    leftovers = edge.db.run_now(lambda c: c.execute("SELECT count(*) FROM replica_snapshot_parts").fetchone()[0])
    assert leftovers == 0


def test_an_older_snapshot_does_not_go_back(cloud: CloudSide, edge: EdgeSide) -> None:
    cloud.add_user("alice", "a long password")
    old = snapshot_messages(cloud)
    cloud.add_user("bob", "a long password")
    synced(edge, cloud)
    for part in old:
        edge.inbox.deliver(part)
    assert edge.dump() == cloud.dump()


def test_a_reset_snapshot_replaces_everything(cloud: CloudSide, edge: EdgeSide, tmp_path: Path, clock: Clock) -> None:
    """
    The cloud's log restarted (a restored backup): the edge is "ahead";
    the cloud answers with a reset snapshot, which the edge installs.
    """
    cloud.add_user("alice", "a long password")
    cloud.add_user("bob", "a long password")
    synced(edge, cloud)
    restored = CloudSide(tmp_path / "restored.db", clock)
    restored.add_user("carol", "a long password")
    edge.tick(hello=True)
    (hello,) = sent(edge)
    restored.inbox.deliver(hello)
    for _, part in restored.run(FakeOutbox.take):
        assert part.body["reset"] is True
        edge.inbox.deliver(part)
    assert edge.dump() == restored.dump()
    assert edge.db.run_now(position).applied == 3
    restored.close()


def test_project_delete_cascades(cloud: CloudSide, edge: EdgeSide) -> None:
    synced(edge, cloud)
    user = cloud.add_user("alice", "a long password")
    project = cloud.run(cloud.registry.create_project, user["id"], "Apollo")
    cloud.run(lambda c: cloud.registry.put_file(c, project, "f", 1))
    cloud.run(cloud.registry.submit_job, project, user["id"], "render", {}, [])
    cloud.run(cloud.registry.delete_project, project)
    edge.inbox.deliver(events_message(cloud, 0, cloud.run(sync.sequence)))
    assert edge.dump() == cloud.dump()
    assert edge.dump()["files"] == [] and edge.dump()["jobs"] == []


class Commands:
    """
    alice owns Apollo, bob is a viewer there; the edge is in sync.
    """

    def __init__(self, cloud: CloudSide, edge: EdgeSide) -> None:
        self.cloud, self.edge = cloud, edge
        self.alice = cloud.add_user("alice", "a long password")
        self.bob = cloud.add_user("bob", "a long password")
        self.project = cloud.run(cloud.registry.create_project, self.alice["id"], "Apollo")
        cloud.run(cloud.registry.set_member, self.project, self.bob["id"], "viewer")
        cloud.publish_kinds(RENDER)
        synced(edge, cloud)

    def principal(self, user: dict[str, Any]) -> Principal:
        return Principal(user["id"], user["name"], "session")

    def round_trip(self) -> None:
        """
        The edge's commands to the cloud, the cloud's answers back.
        """
        for message in sent(self.edge):
            assert message.type != "sync.range"
            self.cloud.inbox.deliver(message)
        applied = self.edge.db.run_now(position).applied
        self.edge.inbox.deliver(events_message(self.cloud, applied, self.cloud.run(sync.sequence)))


@pytest.fixture
def commands(cloud: CloudSide, edge: EdgeSide) -> Commands:
    return Commands(cloud, edge)


def test_own_commands_show_as_pending_then_settle(commands: Commands) -> None:
    c = commands
    alice = c.principal(c.alice)
    c.edge.issue(alice, "project.create", name="Zeus")
    c.edge.issue(alice, "project.rename", project_id=c.project, name="Artemis")
    shown = {p["name"]: p["pending"] for p in c.edge.db.run_now(projects_for, c.alice["id"])}
    assert shown == {"Artemis": "rename", "Home": None, "Zeus": "create"}
    assert c.edge.dump()["projects"] == c.cloud.dump()["projects"], "the replica holds only what the cloud said"
    c.round_trip()
    shown = {p["name"]: p["pending"] for p in c.edge.db.run_now(projects_for, c.alice["id"])}
    assert shown == {"Artemis": None, "Home": None, "Zeus": None}
    assert c.edge.dump() == c.cloud.dump()
    assert c.edge.db.run_now(lambda conn: conn.execute("SELECT count(*) FROM pending_commands").fetchone()[0]) == 0


def test_pending_delete_and_jobs(commands: Commands) -> None:
    c = commands
    alice = c.principal(c.alice)
    c.edge.issue(alice, "job.submit", project_id=c.project, kind="render")
    (shown,) = c.edge.db.run_now(jobs_for, c.alice["id"], c.project)
    assert (shown["state"], shown["pending"]) == ("queued", "submit")
    c.round_trip()
    (shown,) = c.edge.db.run_now(jobs_for, c.alice["id"], c.project)
    assert shown["pending"] is None
    job = shown["id"]
    c.edge.issue(alice, "job.cancel", job_id=job)
    assert c.edge.db.run_now(jobs_for, c.alice["id"], c.project)[0]["pending"] == "cancel"
    c.edge.issue(alice, "project.delete", project_id=c.project)
    apollo = [p for p in c.edge.db.run_now(projects_for, c.alice["id"]) if p["id"] == c.project]
    assert apollo[0]["pending"] == "delete"
    c.round_trip()
    assert c.project not in [p["id"] for p in c.edge.db.run_now(projects_for, c.alice["id"])]
    assert c.edge.dump() == c.cloud.dump()


def test_refused_by_the_cloud_becomes_a_notice(commands: Commands) -> None:
    """
    The edge's replica said yes (bob was still a member there), the cloud
    says no: the user is told why.
    """
    c = commands
    c.cloud.run(c.cloud.registry.set_member, c.project, c.bob["id"], "member")
    c.edge.inbox.deliver(events_message(c.cloud, c.cloud.run(sync.sequence) - 1, c.cloud.run(sync.sequence)))
    c.cloud.run(c.cloud.registry.set_member, c.project, c.bob["id"], "viewer")  # not yet at the edge
    bob = c.principal(c.bob)
    command_id = c.edge.issue(bob, "job.submit", project_id=c.project, kind="render")
    c.round_trip()
    (notice,) = c.edge.db.run_now(notices_for, c.bob["id"])
    assert (notice["command_id"], notice["reason"], notice["code"]) == (
        command_id, "a viewer may not submit jobs in this project", "forbidden",
    )
    assert c.edge.db.run_now(jobs_for, c.bob["id"], c.project) == []
    assert not c.edge.db.run_now(dismiss, c.alice["id"], command_id), "only its user dismisses it"
    assert c.edge.db.run_now(dismiss, c.bob["id"], command_id)
    assert c.edge.db.run_now(notices_for, c.bob["id"]) == []


def test_refused_at_the_edge_sends_nothing(commands: Commands) -> None:
    c = commands
    bob = c.principal(c.bob)
    with pytest.raises(Refused, match="a viewer may not rename"):
        c.edge.issue(bob, "project.rename", project_id=c.project, name="Mine")
    with pytest.raises(Refused, match="no such project"):
        c.edge.issue(bob, "project.delete", project_id="0" * 32)
    assert sent(c.edge) == []
    assert c.edge.db.run_now(lambda conn: conn.execute("SELECT count(*) FROM pending_commands").fetchone()[0]) == 0


def test_commands_carry_the_api_key(commands: Commands) -> None:
    c = commands
    key = c.cloud.run(c.cloud.registry.create_key, c.alice["id"], "ci")
    c.edge.inbox.deliver(events_message(c.cloud, c.cloud.run(sync.sequence) - 1, c.cloud.run(sync.sequence)))
    principal = Principal(c.alice["id"], "alice", "key", key_id=key.key_id)
    c.edge.issue(principal, "project.create", name="Via key")
    (message,) = sent(c.edge)
    assert message.body["actor"] == {"user_id": c.alice["id"], "via": "key", "key_id": key.key_id}
    assert message.type == "project.create" and json.loads(json.dumps(message.body))["name"] == "Via key"


def test_state_survives_a_restart(commands: Commands) -> None:
    c = commands
    c.edge.issue(c.principal(c.alice), "project.create", name="Zeus")
    applied = c.edge.db.run_now(position).applied
    c.edge.restart()
    assert c.edge.db.run_now(position).applied == applied
    assert "Zeus" in [p["name"] for p in c.edge.db.run_now(projects_for, c.alice["id"])]
    c.round_trip()
    assert c.edge.dump() == c.cloud.dump()


def test_ticks_say_hello(cloud: CloudSide, edge: EdgeSide, clock: Clock) -> None:
    assert edge.tick(hello=True)
    (hello,) = sent(edge)
    assert (hello.type, hello.body) == ("sync.hello", {"edge": "e1", "applied": 0, "pending": [], "snapshot": False})
    assert not edge.tick()
    clock.advance(31)
    assert edge.tick(), "still fresh and unanswered: hello again"
    sent(edge)
    synced(edge, cloud)
    clock.advance(31)
    assert not edge.tick()
    clock.advance(600)
    assert edge.tick(), "the periodic hello"
    assert [m.type for m in sent(edge)] == ["sync.hello"]


def test_a_snapshot_that_stopped_coming_is_asked_for_again(cloud: CloudSide, edge: EdgeSide, clock: Clock) -> None:
    user = cloud.add_user("alice", "a long password")
    home = cloud.default_project(user["id"])
    cloud.run(lambda c: [cloud.registry.put_file(c, home, f"f{i}", i) for i in range(600)])
    first, _second = snapshot_messages(cloud)
    edge.inbox.deliver(first)
    clock.advance(121)
    assert edge.tick()
    (hello,) = sent(edge)
    assert hello.body["snapshot"] is True
    assert edge.db.run_now(lambda c: c.execute("SELECT count(*) FROM replica_snapshot_parts").fetchone()[0]) == 0


def test_a_reconnect_does_not_ask_for_a_second_snapshot(cloud: CloudSide, edge: EdgeSide, clock: Clock) -> None:
    assert edge.tick(hello=True)
    assert [m.type for m in sent(edge)] == ["sync.hello"]
    # The link resets a few seconds later; the first hello and its snapshot
    # are still on their way.
    clock.advance(5)
    assert not edge.tick(hello=True)
    assert sent(edge) == []
    # Nothing came for longer than rerequest_after: ask again.
    clock.advance(31)
    assert edge.tick(hello=True)
    assert [m.type for m in sent(edge)] == ["sync.hello"]
    # A synced edge says hello on every reconnect (cheap: it finds gaps).
    synced(edge, cloud)
    clock.advance(1)
    assert edge.tick(hello=True)
