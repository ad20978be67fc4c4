"""
Workers scaled out: two C{relay-cloud} worker processes and one that
queues jobs, sharing the registry on PostgreSQL, with the real broker and
an S3 server, jobs submitted at a real edge.

  - 50 jobs: every one succeeds exactly once (the side file has one line
    per run), and both workers ran some.
  - A worker killed with C{kill -9} mid-job: the job completes on the
    other worker within 30 s of the kill.
  - A worker stopped (SIGSTOP) past its lease, then continued: it records
    nothing for the job (its epoch is old), and its run did not go on
    beside the new one.
  - While a long job runs, C{relay.jobs} holds no unacknowledged delivery.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.testing.job_workers import WorkersWorld, registry_rows
from relay.testing.s3servers import S3Server, start_moto
from tests.postgresql_fixtures import postgresql_dsn, postgresql_server_database  # noqa: F401


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def world(tmp_path: Path, s3: S3Server, postgresql_dsn: str) -> Iterator[WorkersWorld]:  # noqa: F811
    world = WorkersWorld(tmp_path, s3, postgresql_dsn, workers=2, slots=2, lease=4.0, grace=1.0)
    try:
        world.start()
        yield world
    finally:
        world.stop()


def started(world: WorkersWorld, tag: str) -> list[int]:
    """
    The pids of the runs of job C{tag} that started, in order.
    """
    return [int(line.split()[2]) for line in world.side_lines() if line.startswith(f"{tag} start ")]


def test_fifty_jobs_on_two_workers_each_succeed_exactly_once(world: WorkersWorld) -> None:
    tags = {world.submit("tick", tag=f"job-{n}"): f"job-{n}" for n in range(50)}
    world.wait_for("50 jobs finished", lambda: [j["state"] for j in world.jobs().values()].count("succeeded")
                   + [j["state"] for j in world.jobs().values()].count("failed") == 50, 180)
    jobs = world.jobs()
    assert Counter(job["state"] for job in jobs.values()) == {"succeeded": 50}
    runs = Counter(world.side_lines())
    assert runs == Counter(tags.values()), "each job ran exactly once"
    attempts = registry_rows(world.dsn, "SELECT attempts, epoch FROM job_runs")
    assert [(r["attempts"], r["epoch"]) for r in attempts] == [(1, 1)] * 50
    # Both workers took part (each logs the runs it starts).
    ran = {w.log_path.parent.name: w.log_text().count(" starts on ") for w in world.workers}
    assert sum(ran.values()) == 50 and min(ran.values()) > 0, ran
    # A late duplicate delivery is claimed for nothing and acknowledged.
    world.wait_for("no delivery left unacknowledged", lambda: world.unacknowledged() == 0, 15)


def test_a_worker_killed_mid_job_the_other_completes_it_within_30_s(world: WorkersWorld) -> None:
    job_id = world.submit("slow", tag="victim", seconds=6)
    world.wait_for("the first run started", lambda: len(started(world, "victim")) == 1, 60)
    (first,) = started(world, "victim")
    victim = world.worker_running(first)
    assert victim is not None, "the run is a worker's grandchild"
    # While it runs, the broker holds no delivery for it: the lease does.
    assert world.unacknowledged() == 0
    survivor = next(w for w in world.workers if w is not victim)
    victim.kill()
    killed_at = time.monotonic()
    done_at = world.wait_for("the job finished", lambda: world.state(job_id) in ("succeeded", "failed"), 60)
    job = world.jobs()[job_id]
    assert job["state"] == "succeeded", job["error"]
    assert done_at - killed_at < 30
    first_run, second_run = started(world, "victim")
    assert first_run == first
    assert f"victim end {first}" not in world.side_lines(), "the killed worker's run died with it"
    assert f"victim end {second_run}" in world.side_lines()
    run = world.run_of(job_id)
    assert (run["attempts"], run["epoch"]) == (2, 2)
    assert f"job {job_id} attempt 2 (epoch 2) starts on {survivor.log_path.parent.name}" in survivor.log_text()
    # The killed worker restarted (same name): it holds nothing of the
    # job any more, and changes nothing.
    lines = world.side_lines()
    ups = victim.log_text().count("AMQP link up")
    victim.start()
    world.wait_for("the restarted worker's link", lambda: victim.log_text().count("AMQP link up") > ups, 30)
    time.sleep(3)
    assert world.side_lines() == lines
    assert world.state(job_id) == "succeeded"
    assert (world.run_of(job_id)["attempts"], world.run_of(job_id)["epoch"]) == (2, 2)


def test_a_stale_worker_publishes_nothing(world: WorkersWorld) -> None:
    job_id = world.submit("slow", tag="stale", seconds=10)
    first_started = world.wait_for("the first run started", lambda: len(started(world, "stale")) == 1, 60)
    (first,) = started(world, "stale")
    stale = world.worker_running(first)
    assert stale is not None and stale.process is not None
    other = next(w for w in world.workers if w is not stale)
    # Stopped at once, well before its run would end (asking the broker
    # first took seconds on a loaded machine, and the run could reach its
    # end before its shepherd stopped it).
    os.kill(stale.process.pid, signal.SIGSTOP)
    try:
        assert world.unacknowledged() == 0, "the lease keeps the running job, not the delivery"
        # Past its lease: the job runs again on the other worker.
        world.wait_for("the second run", lambda: len(started(world, "stale")) == 2, 30)
        assert world.run_of(job_id)["epoch"] == 2
        # Stopped until well after its run would have ended: a run whose
        # worker stopped renewing its lease was stopped before the lease ran
        # out, so the two never ran at the same time.
        time.sleep(max(0.0, first_started + 12 - time.monotonic()))
        assert f"stale end {first}" not in world.side_lines()
    finally:
        os.kill(stale.process.pid, signal.SIGCONT)
    world.wait_for("the job finished", lambda: world.state(job_id) in ("succeeded", "failed"), 60)
    # The stale worker, continued, finds its epoch old and records nothing.
    world.wait_for("the stale worker gave up", lambda: "lost its lease" in stale.log_text()
                   or "its lease was lost" in stale.log_text(), 30)
    time.sleep(2)  # what it might still (wrongly) write
    job = world.jobs()[job_id]
    run = world.run_of(job_id)
    assert (run["attempts"], run["epoch"]) == (2, 2)
    results = registry_rows(world.dsn, "SELECT id, name FROM files WHERE project_id = ?", (world.project,))
    assert sorted(r["id"] for r in results) == sorted(json.loads(job["result_files"]))
    assert len(results) == 2, "one run's out.txt and log, not two runs'"
    second = started(world, "stale")[1]
    assert world.side_lines().count(f"stale end {second}") == 1
    assert f"stale end {first}" not in world.side_lines()
    assert f"job {job_id} attempt 2 (epoch 2) starts on {other.log_path.parent.name}" in other.log_text()
