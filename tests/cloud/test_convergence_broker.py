"""
Convergence over the real link: a cloud and two edges, each with its own
SQLite database and its own connection to the real RabbitMQ (a vhost of
this module's own, so nobody else's queues are touched).

Hypothesis draws commands by users on both edges (some refused by the
edge, some slipped past its checks, some sent twice), changes made on the
cloud itself, and faults: connections dropped by the client, connections
closed by the broker, and an edge restarted on its database.  At the end
every replica equals the registry row for row, every command was answered
exactly once, and none was applied twice.

Also over the real link: a fresh edge joining a cloud with 10,000 files
converges from a snapshot, and an edge that was offline for a long run of
changes (and whose queue lost them) catches up by range.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater

from relay.cloud import sync
from relay.cloud.jobs.catalogue import publish_catalogue
from relay.credentials import hash_password
from relay.edge.auth import Principal
from relay.edge.replica.pending import actor_of
from relay.link.envelope import to_edge
from relay.permissions import Refused
from relay.sync_messages import COMMANDS, MAX_EVENTS_PER_MESSAGE
from relay.testing.convergence import (
    CloudNode,
    EdgeNode,
    dead_letters,
    difference,
    eventually,
    spin,
)
from relay.testing.registry import RENDER, TEST_COST
from relay.testing.transfer_world import Vhost
from tests.link._broker import close_connections_named, unique

USERS = ("alice", "bob", "carol")

#: Every step's kind, weighted.
ACTIONS = (
    ["command"] * 10 + ["unchecked", "resend"] + ["cloud"] * 3 + ["pause"] * 3
    + ["drop"] * 2 + ["broker kill", "restart"]
)

#: Commands, weighted: new projects give the others something to work on.
TYPES = [*COMMANDS, "project.create", "project.member.add", "job.submit"]


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """
    The AMQP URL of a vhost for this module: the cloud's queue has a fixed
    name, so a vhost is what keeps parallel tests apart.
    """
    host = Vhost().create()
    yield host.url()
    host.delete()


class Run:
    """
    One example: a cloud, two edges, and what the test has issued.
    """

    def __init__(self, directory: Path, url: str) -> None:
        self.cloud = CloudNode(reactor, directory / "cloud.db", url, unique("cloud"))
        self.edges: list[EdgeNode] = []
        for number in (1, 2):
            edge_id = unique(f"e{number}")
            self.edges.append(EdgeNode(reactor, edge_id, directory / f"{edge_id}.db", url, edge_id))
        self.users: dict[str, str] = {}
        self.issued: list[str] = []
        self.created: list[str] = []
        self.jobs: list[str] = []
        self.keys: list[str] = []
        self.broker_kills = 0
        self.refused_by_edges = 0
        self.drops = 0

    async def start(self) -> None:
        self.cloud.start()
        for name in USERS:
            password = hash_password(f"{name} password", TEST_COST)
            user = await self.cloud.run(lambda c, n=name, p=password: self.cloud.registry.add_user(c, n, p))
            self.users[name] = user["id"]
        await self.cloud.run(publish_catalogue, self.cloud.registry.log, [RENDER])
        for edge in self.edges:
            edge.start()
        await eventually(reactor, lambda: difference(self.cloud, self.edges), 30)

    async def stop(self) -> None:
        for edge in self.edges:
            await edge.stop()
        await self.cloud.stop()

    def principal(self, name: str) -> Principal:
        return Principal(self.users[name], name, "session")

    async def registry(self) -> dict[str, Any]:
        return await self.cloud.dump()


class Choices:
    """
    A step's choices, drawn up front as a fixed number of integers: what
    hypothesis records then does not depend on what the step found (the
    timing of the real link decides that), so a failing example replays.
    """

    WIDTH = 10

    def __init__(self, numbers: tuple[int, ...]) -> None:
        self.numbers = numbers
        self._numbers = list(numbers)

    def __repr__(self) -> str:
        return f"Choices({self.numbers})"

    def __call__(self, items: list[Any]) -> Any:
        number = self._numbers.pop(0) if self._numbers else 0
        return items[number % len(items)]


CHOICES = st.tuples(*[st.integers(0, 719)] * Choices.WIDTH).map(Choices)


async def fields_for(pick: Choices, run: Run, type: str, user: str) -> dict[str, Any]:
    registry = await run.registry()
    user_id = run.users[user]

    def project() -> str:
        own = [m["project_id"] for m in registry["members"] if m["user_id"] == user_id and m["role"] == "owner"]
        anything = [p["id"] for p in registry["projects"]] + run.created
        return str(pick(pick([own or anything] * 3 + [anything, [uuid.uuid4().hex]])))

    if type == "project.create":
        project_id = uuid.uuid4().hex
        run.created.append(project_id)
        return {"project_id": project_id, "name": pick(["Apollo", "Zeus", "Hera"]), "description": ""}
    if type == "project.rename":
        return {"project_id": project(), "name": pick(["Apollo", "Athena", "Hermes"])}
    if type == "project.delete":
        return {"project_id": project()}
    if type == "project.member.add":
        return {"project_id": project(), "user_id": run.users[pick(list(USERS))],
                "role": pick(["member", "viewer"])}
    if type == "project.member.remove":
        # Mostly someone who is a member (or oneself leaving).
        members = [(m["project_id"], m["user_id"]) for m in registry["members"] if m["role"] != "owner"]
        project_id, member = pick(members or [(project(), user_id)]) if pick([1, 1, 0]) else (project(), user_id)
        return {"project_id": project_id, "user_id": member}
    if type == "project.member.role":
        members = [(m["project_id"], m["user_id"]) for m in registry["members"]]
        project_id, member = pick(members or [(project(), user_id)])
        return {"project_id": project_id, "user_id": member, "role": pick(["owner", "member", "viewer"])}
    if type == "user.key.create":
        key_id = uuid.uuid4().hex[:16]
        run.keys.append(key_id)
        return {"key_id": key_id, "key_hash": "sha256$" + "0" * 64, "name": pick(["ci", "laptop"])}
    if type == "user.key.revoke":
        return {"key_id": pick(run.keys + [uuid.uuid4().hex[:16]])}
    if type == "job.submit":
        job_id = uuid.uuid4().hex
        run.jobs.append(job_id)
        return {"project_id": project(), "job_id": job_id, "kind": "render", "parameters": {}, "inputs": []}
    if type == "job.cancel":
        return {"job_id": pick(run.jobs + [uuid.uuid4().hex])}
    if type == "user.password":
        # The hash it replaces: the current one, or a stale guess.
        (current,) = [u["password_hash"] for u in registry["users"] if u["id"] == user_id]
        replaces = pick([hashlib.sha256(current.encode()).hexdigest(), "0" * 64])
        return {"password_hash": f"$scrypt$ln=4,r=1,p=1$x${uuid.uuid4().hex}", "replaces": replaces}
    return {"file_id": pick([f["id"] for f in registry["files"]] + [uuid.uuid4().hex])}


async def cloud_change(pick: Choices, run: Run) -> None:
    """
    A change made on the cloud itself (an admin, the transfer stage, a
    worker), not by an edge's command.
    """
    cloud, registry = run.cloud, run.cloud.registry
    user_id = run.users[pick(list(USERS))]
    change = pick(["password", "disable", "enable", "key", "file", "file", "job", "job"])
    try:
        if change == "password":
            hashed = f"$scrypt$ln=4,r=1,p=1$x${uuid.uuid4().hex}"
            await cloud.run(registry.set_password, user_id, hashed)
        elif change in ("disable", "enable"):
            await cloud.run(registry.set_disabled, user_id, change == "disable")
        elif change == "key":
            await cloud.run(registry.create_key, user_id, "k")
        elif change == "file":
            project = pick([p["id"] for p in (await run.registry())["projects"]])
            await cloud.run(lambda c: registry.put_file(c, project, f"f{uuid.uuid4().hex[:6]}", 1))
        else:
            running = [j["id"] for j in (await run.registry())["jobs"] if j["state"] in ("queued", "running")]
            if running:
                job = pick(running)
                if (await cloud.run(registry.job, job))["state"] == "queued":
                    await cloud.run(registry.start_job, job)
                else:
                    await cloud.run(lambda c: registry.finish_job(c, job, "succeeded"))
    except Refused:
        pass


async def step(pick: Choices, run: Run) -> None:
    action = pick(ACTIONS)
    edge = pick(run.edges)
    event(f"action: {action}")
    if action in ("command", "unchecked"):
        user = pick(list(USERS))
        type = pick(TYPES)
        fields = await fields_for(pick, run, type, user)
        if action == "command":
            try:
                run.issued.append(await edge.issue(run.principal(user), type, fields))
            except Refused:
                run.refused_by_edges += 1
        else:
            # What a stale or compromised edge might send: no local check.
            command_id = uuid.uuid4().hex
            await edge.send_raw(type, {"command_id": command_id, "actor": actor_of(run.principal(user)), **fields})
            run.issued.append(command_id)
    elif action == "resend":
        # The same command again, in a new message (a new message id).
        pending = await edge.pending_bodies()
        if pending:
            await edge.send_raw(*pick(pending))
    elif action == "cloud":
        await cloud_change(pick, run)
    elif action == "pause":
        # Let the link carry what is queued for a moment before the next
        # step: this is part of the drawn interleaving, not a wait for
        # anything in particular.
        await deferLater(reactor, pick([0.0, 0.01, 0.05, 0.2]), lambda: None)
    elif action == "drop":
        # Either end drops its connection (as after a network error); the
        # other side learns from the broker.
        target = pick([run.cloud, *run.edges])
        target.drop()
        run.drops += 1
    elif action == "broker kill":
        # The broker closes the connection (rabbitmqctl is slow: once).
        if run.broker_kills == 0:
            target = pick([run.cloud, *run.edges])
            await close_connections_named(target.connection_name)
            run.broker_kills += 1
    elif action == "restart":
        if sum(e.restarts for e in run.edges) == 0:
            await edge.restart()


async def check(run: Run) -> None:
    """
    Wait (bounded) for both edges to catch up, then check the outcome.
    """
    cloud = run.cloud
    await eventually(reactor, lambda: difference(cloud, run.edges), 30)

    # Compare again, explicitly, the full dumps.
    expected = await cloud.dump()
    for edge in run.edges:
        assert await edge.dump() == expected, f"edge {edge.edge_id} differs from the registry"

    # Every command answered exactly once, none applied twice.  (Leftovers
    # from earlier examples may reach this cloud: count ours only.)
    ours, issued = {edge.edge_id for edge in run.edges}, set(run.issued)
    logged = await cloud.run(sync.events, 0, 10**9)
    answers = Counter(
        e["data"]["command_id"]
        for e in logged
        if e["kind"] in ("command.applied", "command.rejected") and e["data"]["edge"] in ours
    )
    assert set(answers) == issued
    assert set(answers.values()) <= {1}, "a command was answered (applied) twice"
    recorded = await cloud.run(
        lambda c: [row[0] for row in c.execute("SELECT command_id FROM commands").fetchall()]
    )
    assert set(recorded) >= issued
    assert len(recorded) == len(set(recorded))
    # A command applied twice would also have logged its changes twice.
    changes = Counter(
        (e["command_id"], e["kind"], json.dumps(e["data"], sort_keys=True))
        for e in logged
        if e["command_id"] in issued and not e["kind"].startswith("command.")
    )
    assert set(changes.values()) <= {1}, "a command's change was logged twice"
    names = Counter((p["owner_id"], p["name"]) for p in expected["projects"])
    assert set(names.values()) <= {1}
    # Nothing was refused by an inbox as malformed.
    assert await dead_letters(cloud.db) == 0
    for edge in run.edges:
        assert await dead_letters(edge.db) == 0

    for kind in sorted({e["kind"] for e in logged}):
        event(f"logged: {kind}")
    rejected = await cloud.run(
        lambda c: c.execute("SELECT count(*) FROM commands WHERE status = 'rejected'").fetchone()[0]
    )
    event(f"commands: {len(run.issued) // 5 * 5}+")
    event(f"refused by the cloud: {'some' if rejected else 'none'}")
    event(f"refused by the edges: {'some' if run.refused_by_edges else 'none'}")
    event(f"link faults: {run.drops + run.broker_kills}")


@settings(
    max_examples=8, deadline=None, derandomize=True, database=None,
    # Each example costs seconds on the real broker: report the failing
    # example as found rather than shrink it for minutes.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(CHOICES, min_size=30, max_size=60))
def test_every_replica_converges_to_the_registry_over_the_broker(vhost: str, plan: list[Choices]) -> None:
    async def example() -> None:
        with tempfile.TemporaryDirectory() as directory:
            run = Run(Path(directory), vhost)
            try:
                await run.start()
                for choices in plan:
                    await step(choices, run)
                await check(run)
            finally:
                await run.stop()

    spin(reactor, example, 90)


def add_files(cloud: CloudNode, user_id: str, count: int) -> Any:
    def many(conn: Any) -> None:
        home = conn.execute("SELECT id FROM projects WHERE owner_id = ? AND is_default = 1", (user_id,)).fetchone()[0]
        for i in range(count):
            cloud.registry.put_file(conn, home, f"file-{i:05}.bin", i, sha256=f"{i:064x}", object_key=f"o/{i}")

    return cloud.run(many)


def test_fresh_edge_converges_from_a_snapshot_of_10000_files(vhost: str, tmp_path: Path) -> None:
    async def example() -> None:
        cloud = CloudNode(reactor, tmp_path / "cloud.db", vhost, unique("cloud"))
        edge_id = unique("fresh")
        edge = EdgeNode(reactor, edge_id, tmp_path / "edge.db", vhost, edge_id)
        cloud.start()
        try:
            user = await cloud.run(cloud.registry.add_user, "alice", hash_password("a password", TEST_COST))
            await add_files(cloud, user["id"], 10_000)
            edge.start()
            await eventually(reactor, lambda: difference(cloud, [edge]), 30)
            assert len((await edge.dump())["files"]) == 10_000
            snapshots, ranges = await cloud.run(
                lambda c: c.execute("SELECT snapshots, ranges FROM sync_edges WHERE edge = ?", (edge_id,)).fetchone()
            )
            # One hello, when the link comes up: a second would start a
            # second snapshot.
            assert (snapshots, ranges) == (1, 0), "a fresh edge gets one snapshot, not the log"
        finally:
            await edge.stop()
            await cloud.stop()

    spin(reactor, example, 60)


def test_offline_edge_catches_up_by_range(vhost: str, tmp_path: Path) -> None:
    """
    An edge that was stopped during a long run of changes (2,000 events)
    and whose queue lost them meanwhile asks for them when it starts again,
    and gets events, not a new snapshot.
    """

    async def example() -> None:
        cloud = CloudNode(reactor, tmp_path / "cloud.db", vhost, unique("cloud"))
        edge_id = unique("far")
        edge = EdgeNode(reactor, edge_id, tmp_path / "edge.db", vhost, edge_id)
        cloud.start()
        try:
            user = await cloud.run(cloud.registry.add_user, "alice", hash_password("a password", TEST_COST))
            edge.start()
            await eventually(reactor, lambda: difference(cloud, [edge]), 30)
            await edge.stop()

            registry = cloud.registry
            home = (await cloud.run(registry.projects, user["id"]))[0]["id"]
            for i in range(100):
                def changes(c: Any, i: int = i) -> None:
                    for j in range(10):
                        registry.put_file(c, home, f"f{i}-{j}", j)
                        registry.rename_project(c, home, f"Home {i}-{j}")
                await cloud.run(changes)
            await cloud.run(registry.set_password, user["id"], "$scrypt$changed")
            # The publisher sent the run to the edge's queue; the queue is
            # lost (deleted, as after expiring in a long outage), and with
            # it the run.
            await eventually(reactor, lambda: _sent_upto_head(cloud, edge_id), 30)
            await cloud.bridge.drained()
            channel = cloud.bridge.link.channel
            assert channel is not None
            assert await channel.delete_queue(to_edge(edge_id)) >= 2_001 // MAX_EVENTS_PER_MESSAGE

            await edge.restart()
            await eventually(reactor, lambda: difference(cloud, [edge]), 30)
            snapshots, ranges = await cloud.run(
                lambda c: c.execute("SELECT snapshots, ranges FROM sync_edges WHERE edge = ?", (edge_id,)).fetchone()
            )
            assert snapshots == 1, "caught up by range, not by a new snapshot"
            assert ranges >= 1
        finally:
            await edge.stop()
            await cloud.stop()

    spin(reactor, example, 60)


async def _sent_upto_head(cloud: CloudNode, edge_id: str) -> str | None:
    sent = await cloud.run(lambda c: c.execute("SELECT sent_upto FROM sync_sent WHERE edge = ?", (edge_id,)).fetchone()[0])
    head = await cloud.head()
    return None if sent == head else f"sent up to {sent} of {head}"
