"""
Convergence: random commands from two edges (some refused by the edge,
some slipped past it to be refused by the cloud, some sent twice), random
changes made on the cloud itself, messages duplicated and reordered, an
edge's queue losing messages for a while, and edge restarts.  At the end
every replica equals the registry, row for row, every command was answered
exactly once, and no command was applied twice.

The fake inboxes do not deduplicate here: the handlers' own idempotency
is what is checked.
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from relay.cloud import sync
from relay.edge.auth import Principal
from relay.edge.replica.pending import actor_of
from relay.jobkinds import CatalogueEntry
from relay.link.envelope import TO_CLOUD, to_edge
from relay.permissions import Refused
from relay.sync_messages import COMMANDS
from relay.testing.registry import RENDER
from tests.cloud.world import World

USERS = ("alice", "bob", "carol")
EDGES = ("e1", "e2")


class Run:
    """
    One example: a world, and what the test has issued.
    """

    def __init__(self, seed: int, directory: Path) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        self.world = World(directory, self.clock, seed, duplicate=0.15, dedupe=False)
        self.users = {name: self.world.cloud.add_user(name, f"{name} password")["id"] for name in USERS}
        self.world.cloud.publish_kinds(RENDER)
        for edge_id in EDGES:
            self.world.edge(edge_id).tick(hello=True)
        self.issued: list[str] = []
        self.created: set[str] = set()
        self.jobs: set[str] = set()
        self.keys: list[str] = []

    def principal(self, name: str) -> Principal:
        return Principal(self.users[name], name, "session")

    def projects(self) -> list[str]:
        return sorted({p["id"] for p in self.world.cloud.dump()["projects"]} | self.created)

    def files(self) -> list[str]:
        return sorted(f["id"] for f in self.world.cloud.dump()["files"])


def fields_for(draw: Any, run: Run, type: str, user: str) -> dict[str, Any]:
    projects = run.projects() + [uuid.uuid4().hex]
    pick = lambda items: draw(st.sampled_from(items))  # noqa: E731
    if type == "project.create":
        project_id = uuid.uuid4().hex
        run.created.add(project_id)
        return {"project_id": project_id, "name": pick(["Apollo", "Zeus", "Hera"]), "description": ""}
    if type == "project.rename":
        return {"project_id": pick(projects), "name": pick(["Apollo", "Athena", "Hermes"])}
    if type == "project.delete":
        return {"project_id": pick(projects)}
    if type == "project.member.add":
        return {"project_id": pick(projects), "user_id": run.users[pick(list(USERS))],
                "role": pick(["member", "viewer"])}
    if type == "project.member.remove":
        return {"project_id": pick(projects), "user_id": run.users[pick(list(USERS))]}
    if type == "project.member.role":
        return {"project_id": pick(projects), "user_id": run.users[pick(list(USERS))],
                "role": pick(["owner", "member", "viewer"])}
    if type == "user.key.create":
        key_id = uuid.uuid4().hex[:16]
        run.keys.append(key_id)
        return {"key_id": key_id, "key_hash": "sha256$" + "0" * 64, "name": pick(["ci", "laptop"])}
    if type == "user.key.revoke":
        return {"key_id": pick(run.keys + [uuid.uuid4().hex[:16]])}
    if type == "job.submit":
        job_id = uuid.uuid4().hex
        run.jobs.add(job_id)
        return {"project_id": pick(projects), "job_id": job_id, "kind": "render", "parameters": {}, "inputs": []}
    if type == "job.cancel":
        return {"job_id": pick(sorted(run.jobs) + [uuid.uuid4().hex])}
    if type == "user.password":
        # The hash it replaces: the current one, or a stale guess.
        (current,) = [u["password_hash"] for u in run.world.cloud.dump()["users"] if u["name"] == user]
        replaces = pick([hashlib.sha256(current.encode()).hexdigest(), "0" * 64])
        return {"password_hash": f"$scrypt$ln=4,r=1,p=1$x${uuid.uuid4().hex}", "replaces": replaces}
    return {"file_id": pick(run.files() + [uuid.uuid4().hex])}


def step(draw: Any, run: Run) -> None:
    world = run.world
    action = draw(st.sampled_from(
        ["command"] * 6 + ["unchecked", "resend", "cloud", "deliver", "deliver", "publish", "restart",
                           "lose", "tick"]
    ))
    edge = world.edges[draw(st.sampled_from(EDGES))]
    if action in ("command", "unchecked"):
        user = draw(st.sampled_from(USERS))
        type = draw(st.sampled_from(COMMANDS))
        fields = fields_for(draw, run, type, user)
        if action == "command":
            try:
                run.issued.append(edge.issue(run.principal(user), type, **fields))
            except Refused:
                pass
        else:
            # What a compromised or stale edge might send: no local check.
            command_id = uuid.uuid4().hex
            body = {"command_id": command_id, "actor": actor_of(run.principal(user)), **fields}
            edge.db.run_now(lambda c: edge.outbox.put(c, type, body, to=TO_CLOUD))
            run.issued.append(command_id)
    elif action == "resend":
        # The same command again in a new message (a new message id).
        rows = edge.db.run_now(lambda c: c.execute("SELECT type, body FROM pending_commands").fetchall())
        if rows:
            type, body = rows[draw(st.integers(0, len(rows) - 1))]
            edge.db.run_now(lambda c: edge.outbox.put(c, type, json.loads(body), to=TO_CLOUD))
    elif action == "cloud":
        cloud, r = world.cloud, world.cloud.registry
        user_id = run.users[draw(st.sampled_from(USERS))]
        change = draw(st.sampled_from(["password", "disable", "enable", "key", "file", "job", "kinds"]))
        try:
            if change == "password":
                cloud.run(r.set_password, user_id, f"$scrypt$ln=4,r=1,p=1$x${uuid.uuid4().hex}")
            elif change in ("disable", "enable"):
                cloud.run(r.set_disabled, user_id, change == "disable")
            elif change == "key":
                cloud.run(r.create_key, user_id, "k")
            elif change == "kinds":
                # A cloud restarted with other job kinds: some added, some
                # changed, some gone (the edges check job requests by them).
                names = draw(st.sets(st.sampled_from(["render", "lint", "synth"])))
                frames = draw(st.integers(1, 3))
                cloud.publish_kinds(*[
                    CatalogueEntry(name, f"{name} x{frames}", {"type": "object"}, max_inputs=frames)
                    for name in sorted(names)
                ])
            elif change == "file":
                projects = [p["id"] for p in cloud.dump()["projects"]]
                project = draw(st.sampled_from(projects))
                cloud.run(lambda c: r.put_file(c, project, f"f{uuid.uuid4().hex[:6]}", 1))
            else:
                queued = [j["id"] for j in cloud.dump()["jobs"] if j["state"] in ("queued", "running")]
                if queued:
                    job = draw(st.sampled_from(queued))
                    state = cloud.run(r.job, job)["state"]
                    if state == "queued":
                        cloud.run(r.start_job, job)
                    else:
                        cloud.run(lambda c: r.finish_job(c, job, "succeeded"))
        except Refused:
            pass
    elif action == "deliver":
        world.link.collect()
        for _ in range(draw(st.integers(1, 8))):
            world.link.deliver_one()
    elif action == "publish":
        world.cloud.publish()
    elif action == "restart":
        edge.restart()
        edge.tick(hello=True)
    elif action == "lose":
        queue = to_edge(edge.edge_id)
        world.link.lose(queue, queue not in world.link.losing)
    else:
        run.clock.advance(draw(st.integers(1, 60)))
        edge.tick()


@settings(
    max_examples=20, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_every_replica_converges_to_the_registry(data: st.DataObject) -> None:
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    # Ids decide orderings the draws depend on: make them repeatable, so
    # that hypothesis can replay and shrink a failure.
    ids = random.Random(seed)
    with tempfile.TemporaryDirectory() as directory, mock.patch(
        "uuid.uuid4", lambda: uuid.UUID(int=ids.getrandbits(128), version=4)
    ):
        run = Run(seed, Path(directory))
        world = run.world
        try:
            for _ in range(data.draw(st.integers(20, 60), label="steps")):
                step(data.draw, run)
            for queue in list(world.link.losing):
                world.link.lose(queue, False)
            world.settle()

            rejected = world.cloud.run(
                lambda c: c.execute("SELECT count(*) FROM commands WHERE status = 'rejected'").fetchone()[0]
            )
            event(f"commands: {len(run.issued) // 5 * 5}+")
            event(f"refused by the cloud: {'some' if rejected else 'none'}")
            event(f"messages lost: {'some' if world.link.lost else 'none'}")

            expected = world.cloud.dump()
            for edge in world.edges.values():
                assert edge.dump() == expected, f"edge {edge.edge_id} differs from the registry"

            # Every command answered exactly once; none left pending.
            answers = Counter(
                e["data"]["command_id"]
                for e in world.cloud.run(sync.events, 0, 10**9)
                if e["kind"] in ("command.applied", "command.rejected")
            )
            assert set(answers) == set(run.issued)
            assert set(answers.values()) <= {1}, "a command was answered (applied) twice"
            recorded = world.cloud.run(lambda c: c.execute("SELECT count(*) FROM commands").fetchone()[0])
            assert recorded == len(run.issued)
            for edge in world.edges.values():
                pending = edge.db.run_now(
                    lambda c: c.execute("SELECT count(*) FROM pending_commands WHERE state = 'pending'").fetchone()[0]
                )
                assert pending == 0, f"edge {edge.edge_id} has unanswered commands"
            # Each project created by a command exists at most once.
            names = Counter((p["owner_id"], p["name"]) for p in expected["projects"])
            assert set(names.values()) <= {1}
        finally:
            world.close()
