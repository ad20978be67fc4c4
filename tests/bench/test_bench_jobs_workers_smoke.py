"""
bench/jobs_workers.py end to end with a few jobs: it exits 0 (every job
succeeded exactly once, on each worker count) and prints the table.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_jobs_workers_benchmark_runs_and_prints_the_table(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "jobs_workers.py"), "--jobs", "6", "--workers", "1,2",
               "--dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "workers", "slots", "jobs", "succeeded", "seconds", "jobs/min", "vs 1 worker", "runs per worker",
        "duplicates", "lost", "CPU ms/job", "cores busy", "machine busy", "run ms", "outside ms",
        "CPU ms/job: workers/dispatch/edge/s3/pg/rabbit",
    ]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[2:4]]
    assert [(r[0], r[2], r[3], r[8], r[9]) for r in rows] == [("1", "6", "6", "0", "0"), ("2", "6", "6", "0", "0")]
    assert rows[0][6] == "1.00"
    assert sum(int(n) for n in rows[1][7].split("/")) == 6
    assert all(float(r[13]) > 0 for r in rows), "a run takes some time"
    assert all(float(r[10]) >= sum(float(n) for n in r[15].split("/")[:4]) - 4 for r in rows), \
        "the CPU per job is its parts' sum"
    assert "S3 server: rclone" in done.stdout
