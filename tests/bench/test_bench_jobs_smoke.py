"""
bench/jobs.py end to end with one short job per scenario: it exits 0 (the
log line targets met) and prints its table, three measures per scenario.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_jobs_benchmark_runs_and_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "jobs.py"), "--jobs", "1", "--lines", "5"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("scenario  "))
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[header + 2 : header + 8]]
    assert [(r[0], r[1]) for r in rows] == [
        (scenario, measure)
        for scenario in ("loopback", "300 ms RTT")
        for measure in ("log line -> /api/events", "submit -> command start", "submit -> edge sees running")
    ]
    assert [r[2] for r in rows] == ["5", "1", "1"] * 2
    assert [r[-1] for r in rows if "log line" in r[1]] == ["yes", "yes"]
