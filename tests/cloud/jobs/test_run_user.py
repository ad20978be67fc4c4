"""
C{[jobs] run_user}: a worker running as root runs the jobs' commands as
an unprivileged user, who can use its run's directory and inputs and
nothing of the worker's; set where the worker is not root, it is a
configuration error at startup.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from relay.cloud.config import CloudConfig
from relay.config import ConfigError, load
from relay.testing.job_workers import WorkersWorld
from relay.testing.s3servers import S3Server, start_moto
from tests.postgresql_fixtures import postgresql_dsn, postgresql_server_database  # noqa: F401

#: Says who it runs as, what it may write, read and see.
WHOAMI = """
[jobs.kinds.whoami]
description = "Who am I, and what may I touch?"
command = ["sh", "-c", "id -u; id -g; cat inputs/*; touch \\"$HOME/h\\" \\"$TMPDIR/t\\" && echo writable; touch ../escape 2>/dev/null && echo escaped || echo confined; ls .. >/dev/null 2>&1 && echo listed || echo unlisted; cat ../log >/dev/null 2>&1 && echo read-log || echo no-log; touch ../lease 2>/dev/null && echo renewed || echo no-lease; grep NoNewPrivs /proc/self/status | tr -d ' \\t'; echo done > out.txt"]
min_inputs = 1
results = ["out.txt"]
timeout = 60.0
"""


def config(tmp_path: Path, jobs: str) -> Path:
    path = tmp_path / "cloud.toml"
    path.write_text(f"[jobs]\n{jobs}\n")
    return path


def test_a_worker_not_running_as_root_cannot_have_a_run_user(tmp_path: Path) -> None:
    with mock.patch("os.geteuid", return_value=1000), pytest.raises(ConfigError) as refused:
        load(CloudConfig, config(tmp_path, 'run_user = "nobody"'))
    assert "jobs.run_user: running jobs as 'nobody' needs relay-cloud to run as root (it runs as uid 1000)" in str(
        refused.value
    )
    # A process that only queues jobs runs none: nothing to check.
    with mock.patch("os.geteuid", return_value=1000):
        assert load(CloudConfig, config(tmp_path, 'role = "dispatch"\nrun_user = "nobody"')).jobs.run_user == "nobody"


def test_the_run_user_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="jobs.run_user: there is no user 'no-such-user-here' on this machine"):
        load(CloudConfig, config(tmp_path, 'run_user = "no-such-user-here"'))


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = start_moto()
    yield server
    server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root (the config error is tested)")
def test_jobs_run_as_the_run_user(tmp_path: Path, s3: S3Server, postgresql_dsn: str) -> None:  # noqa: F811
    nobody = pwd.getpwnam("nobody")
    # The test's own directory is root's alone: the runs go where the run
    # user can pass (the worker checks, and logs what it cannot).
    runs = Path(tempfile.mkdtemp(prefix="relay-run-user-"))
    runs.chmod(0o711)
    work = runs / "work"
    world = WorkersWorld(tmp_path, s3, postgresql_dsn, workers=1, jobs={"run_user": "nobody", "work_dir": str(work)},
                         kinds_toml=WHOAMI)
    try:
        world.start()
        source = world.put_input("design.v", b"module top; endmodule\n")
        job_id = world.submit("whoami", inputs=(source,))
        world.wait_for("the job finished", lambda: world.state(job_id) in ("succeeded", "failed"), 60)
        job = world.jobs()[job_id]
        assert job["state"] == "succeeded", job["error"]
        log = world.result(job_id, ".log").decode().splitlines()
        assert log == [
            str(nobody.pw_uid), str(nobody.pw_gid), "module top; endmodule", "writable", "confined", "unlisted",
            "no-log", "no-lease", "NoNewPrivs:1",
        ]
        assert world.result(job_id, "out.txt") == b"done\n"
        assert oct(work.stat().st_mode & 0o777) == "0o711"
        assert os.listdir(work) == [], "the run's directory is gone"
        assert "cannot pass through" not in world.workers[0].log_text()
    finally:
        world.stop()
        shutil.rmtree(runs)


def test_a_work_dir_the_run_user_cannot_reach_is_reported() -> None:
    from relay.cloud.jobs.runuser import RunUser

    nobody = RunUser.named("nobody")
    top = Path(tempfile.mkdtemp(prefix="relay-run-user-"))
    try:
        top.chmod(0o711)
        closed = top / "closed"
        (closed / "work").mkdir(parents=True)
        closed.chmod(0o700)
        assert nobody.unsearchable(closed / "work") == closed.resolve()
        closed.chmod(0o711)
        assert nobody.unsearchable(closed / "work") is None
    finally:
        shutil.rmtree(top)
