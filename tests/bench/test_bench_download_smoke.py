"""
bench/download.py end to end with tiny sizes (C{--quick}): it exits 0
(relay delivered the right bytes everywhere) and prints its table, one row
per contender and scenario, and its target checks.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_download_benchmark_runs_and_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "download.py"), "--quick"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    # Every parameter is printed before anything is measured.
    assert lines[0].startswith("sizes: cached 16 MiB, uncached 8 MiB, job result 4 MiB"), lines[:3]
    assert "300 ms RTT, 512 KiB/s per connection, a reset every 20 s" in lines[1]
    assert "aggregate 4.0 MiB/s" in lines[1]
    header = next(i for i, line in enumerate(lines) if line.startswith("scenario  "))
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[header + 2 : header + 9]]
    assert [(r[0], r[1]) for r in rows] == [
        ("cached 16 MiB, 1 client(s)", "nginx (plaintext, sendfile)"),
        ("cached 16 MiB, 1 client(s)", "relay edge (encrypted cache)"),
        ("cached 16 MiB, 8 client(s)", "nginx (plaintext, sendfile)"),
        ("cached 16 MiB, 8 client(s)", "relay edge (encrypted cache)"),
        ("uncached 8 MiB, China link", "relay edge B (parallel ranged GETs)"),
        ("uncached 8 MiB, China link", "one presigned GET, one stream, resumed"),
        ("uncached 8 MiB, China link", "boto3 download_file (default TransferConfig)"),
    ]
    result = re.split(r"\s{2,}", lines[header + 9].strip())
    assert result[:2] == ["job result 4 MiB, China link", "relay edge A (prefetch of results)"]
    # relay's rows finished (seconds, MB/s, done) and carry their ratio to the baselines.
    for row in (rows[1], rows[3], rows[4], result):
        assert float(row[3]) > 0 and row[5] == "yes", row
    assert rows[1][6].endswith("x nginx") and rows[3][6].endswith("x nginx")
    assert "x single stream" in rows[4][6] and "x boto3 download_file" in rows[4][6]
    assert "edge peak RSS" in rows[1][-1]
    checks = [line for line in lines if line.startswith("  [")]
    assert len(checks) == 7, checks
    assert checks[-1].startswith("  [    MET     ] 100 % completion"), checks[-1]
