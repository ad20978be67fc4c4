"""
Claims, leases and fencing on a real SQLite registry: one claim per
attempt, a stale worker records nothing, an expired lease gives the job
another attempt until its attempts are used up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from relay.cloud import registry as registry_schema
from relay.cloud import sync
from relay.cloud.jobs.leases import JOB_RUN, JobLeases
from relay.cloud.jobs.leases import SCHEMA as JOBS_SCHEMA
from relay.cloud.registry import Registry
from relay.db import connect, migrate, transaction
from relay.link.envelope import JOBS
from relay.testing.sync import SCHEMA as FAKE_LINK_SCHEMA


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str]] = []

    def put(self, conn: Any, type: str, body: dict[str, Any], *, to: str, **_: Any) -> None:
        self.sent.append((type, body, to))

    def wake(self) -> None:
        pass


@pytest.fixture
def world(tmp_path: Path) -> Any:
    conn = connect(tmp_path / "cloud.db")
    for schema in (FAKE_LINK_SCHEMA, registry_schema.SCHEMA, sync.SCHEMA, JOBS_SCHEMA):
        migrate(conn, schema)
    clock = Clock()
    clock.advance(1_764_000_000)
    registry = Registry(sync.EventLog(clock), clock)
    outbox = Outbox()
    leases = JobLeases(registry, outbox, lease=10.0)  # type: ignore[arg-type]

    def run(work: Any, *args: Any, **kwargs: Any) -> Any:
        return transaction(conn, lambda c: work(c, *args, **kwargs))

    user = run(registry.add_user, "alice", "x")
    project = run(registry.create_project, user["id"], "P")
    job_id = run(registry.submit_job, project, user["id"], "k", {}, [])
    run(leases.dispatch, job_id, 2)

    class World:
        pass

    w = World()
    w.__dict__.update(conn=conn, clock=clock, registry=registry, outbox=outbox, leases=leases, run=run,
                      job_id=job_id, state=lambda: run(registry.job, job_id)["state"])
    yield w
    conn.close()


def test_dispatch_puts_one_message_on_the_work_queue(world: Any) -> None:
    assert world.outbox.sent == [(JOB_RUN, {"job_id": world.job_id}, JOBS)]


def test_only_one_claim_per_attempt(world: Any) -> None:
    now = world.clock.seconds()
    first = world.run(world.leases.claim, world.job_id, "w1", now)
    assert first is not None and first.epoch == 1 and first.attempt == 1
    assert world.run(world.leases.claim, world.job_id, "w2", now) is None
    assert world.state() == "running"


def test_a_stale_worker_records_nothing(world: Any) -> None:
    claim = world.run(world.leases.claim, world.job_id, "w1", world.clock.seconds())
    world.clock.advance(11)
    assert world.run(world.leases.reap, world.clock.seconds()) == [(world.job_id, "requeued")]
    second = world.run(world.leases.claim, world.job_id, "w2", world.clock.seconds())
    assert second.epoch == 2
    # The first worker comes back: its renewal, progress and outcome fail.
    assert world.run(world.leases.holds, claim, world.clock.seconds()) == "lost"
    assert world.run(world.leases.finish, claim, "succeeded", world.clock.seconds(), [], None) is False
    assert world.state() == "running"
    assert world.run(world.leases.finish, second, "succeeded", world.clock.seconds(), [], None)
    assert world.state() == "succeeded"


def test_renewal_keeps_the_lease_and_cancel_is_noticed(world: Any) -> None:
    claim = world.run(world.leases.claim, world.job_id, "w1", world.clock.seconds())
    for _ in range(5):
        world.clock.advance(5)
        assert world.run(world.leases.progress, claim, 0.5, world.clock.seconds()) is None
    assert world.run(world.leases.reap, world.clock.seconds()) == []
    world.run(world.registry.cancel_job, world.job_id)
    assert world.run(world.leases.holds, claim, world.clock.seconds()) == "cancelled"


def test_the_last_attempt_fails_the_job(world: Any) -> None:
    for attempt in (1, 2):
        assert world.run(world.leases.claim, world.job_id, f"w{attempt}", world.clock.seconds()) is not None
        world.clock.advance(11)
        world.run(world.leases.reap, world.clock.seconds())
    job = world.run(world.registry.job, world.job_id)
    assert job["state"] == "failed"
    assert "lost on each of its 2 attempts" in job["error"]
    assert world.run(world.leases.claim, world.job_id, "w3", world.clock.seconds()) is None


def test_a_running_job_deleted_with_its_project_is_forgotten(world: Any) -> None:
    assert world.run(world.leases.claim, world.job_id, "w1", world.clock.seconds()) is not None
    project = world.run(world.registry.job, world.job_id)["project_id"]
    world.run(world.registry.delete_project, project)
    world.clock.advance(11)
    assert world.run(world.leases.reap, world.clock.seconds()) == []
    assert world.conn.execute("SELECT count(*) FROM job_runs").fetchone()[0] == 0


def test_the_dispatch_refuses_what_an_edge_should_have_refused(world: Any) -> None:
    """
    The cloud checks a request again (an edge may be stale or lie): the
    kind, the parameters and that each input is a stored file.
    """
    from relay.cloud.jobs.component import JobDispatch
    from relay.cloud.jobs.kinds import JobKind
    from relay.permissions import Refused

    dispatch = JobDispatch({"cat": JobKind(command=("cat", "{inputs}", "{name}"), min_inputs=1)}, world.leases)
    first = world.run(world.registry.job, world.job_id)
    project, user = first["project_id"], first["submitted_by"]
    stored = world.run(world.registry.put_file, project, "in", 1, sha256="0" * 64, object_key="k")
    receiving = world.run(world.registry.put_file, project, "late", 1, state="receiving")

    def queue(kind: str, parameters: dict[str, Any], inputs: list[str]) -> None:
        def work(conn: Any) -> None:
            job_id = world.registry.submit_job(conn, project, user, kind, parameters, inputs)
            dispatch.job_queued(conn, world.registry.job(conn, job_id))

        world.run(work)

    for kind, parameters, inputs, code, reason in [
        ("dog", {}, [stored], "invalid", "no job kind 'dog'"),
        ("cat", {"name": "-n"}, [stored], "invalid", "parameter name: may not start with '-'"),
        ("cat", {"name": "../x"}, [stored], "invalid", "parameter name: may not be an absolute path"),
        ("cat", {}, [], "invalid", "this kind takes 1 to 100 input files, got 0"),
        ("cat", {}, [receiving], "invalid",
         f"input file {receiving} is not stored in the cloud yet: its state is receiving"),
    ]:
        with pytest.raises(Refused, match=reason.replace("(", r"\(").replace(")", r"\)")) as refused:
            queue(kind, parameters, inputs)
        assert refused.value.code == code
    assert world.outbox.sent == [(JOB_RUN, {"job_id": world.job_id}, JOBS)], "nothing more was queued"
    queue("cat", {"name": "out.txt"}, [stored])
    assert len(world.outbox.sent) == 2
