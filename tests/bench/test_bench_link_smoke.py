"""
bench/link.py end to end with tiny counts and a short emulated round trip:
it exits 0 (relay applied every message exactly once) and prints the table,
one row per system and measure in each scenario.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
COLUMNS = [
    "scenario", "system", "done when", "messages", "seconds", "msg/s", "vs Shovel",
    "loss", "duplicates", "notes",
]


def table(output: str) -> list[dict[str, str]]:
    """
    The rows of the benchmark's table (columns are two or more spaces apart).
    """
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("scenario  "))
    assert re.split(r"\s{2,}", lines[start]) == COLUMNS, lines[start]
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows.append(dict(zip(COLUMNS, cells, strict=False)))
    return rows


def test_link_benchmark_runs_and_prints_the_table(tmp_path: Path) -> None:
    command = [
        sys.executable, str(ROOT / "bench" / "link.py"), "--count", "200",
        "--scenarios", "loopback,resets", "--latency-ms", "20", "--reset-mean-s", "1",
        "--timeout", "20", "--dir", str(tmp_path),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table(done.stdout)
    expected = [
        (scenario, system, measured)
        for scenario in ("loopback", "40 ms RTT, resets ~1 s")
        for system, measured in [
            ("relay", "edge confirmed"), ("relay", "cloud applied"), ("Shovel", "dest holds N"),
        ]
    ]
    assert [(r["scenario"], r["system"], r["done when"]) for r in rows] == expected
    for row in rows:
        assert row["messages"] == "200", row
        # A finished run has a time (a tiny Shovel run may round to 0.00).
        assert float(row["seconds"]) >= 0, row
        if row["system"] == "relay":
            # Exactly once: everything applied, nothing twice.
            assert (row["loss"], row["duplicates"]) == ("0", "0"), row
            assert float(row["msg/s"].replace(",", "")) > 0, row
    assert "targets:" in done.stdout
