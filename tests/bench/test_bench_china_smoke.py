"""
bench/china.py end to end with tiny sizes: both layouts run the whole
journey (pages, uploads, both jobs, downloads with every byte checked), and
the table has a row per step and layout with relay's ratio to the before
layout, then the targets.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

STEPS = [
    "log in", "open the project list", "open a project", "upload the files (the person's wait)",
    "upload one file", "files in the cloud, from the upload's start", "checksum job: submitted to results listed",
    "synth job: submitted to results listed", "results downloadable, from the upload's start",
    "download a job's result", "download an uploaded file",
]


def test_the_journey_runs_in_both_layouts_and_prints_the_table(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "bench" / "china.py"), "--files", "2", "--min-mib", "1", "--max-mib", "1",
               "--total-mib", "2", "--page-loads", "2", "--dir", str(tmp_path), "--plots", str(tmp_path / "plots")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("layouts: relay, before; 2 files of 1-1 MiB (2 MiB)"), lines[0]
    assert "300 ms RTT, 512 KiB/s per connection, aggregate 4 MiB/s, a reset every 20 s" in lines[1]
    header = next(i for i, line in enumerate(lines) if line.startswith("step  "))
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[header + 2:] if line.strip()]
    rows = [r for r in rows if len(r) == 9]
    assert [(r[0], r[1]) for r in rows] == [(step, layout) for step in STEPS for layout in ("relay", "before")]
    for row in rows:
        assert int(row[2]) >= 1 and row[3] != "-", row
    pages = [r for r in rows if r[0] == "open the project list"]
    assert [int(r[2]) for r in pages] == [2, 2]
    assert pages[0][8].endswith("x"), "relay's row carries the ratio to the before layout"
    targets = [line for line in lines if line.startswith("  [")]
    assert len(targets) == 5, targets
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["china-page-loads.png", "china-uploads.png"]
