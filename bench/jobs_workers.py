"""
Jobs per minute of a trivial kind with 1, 2 and 4 workers, each its own
relay-cloud process, sharing one registry on PostgreSQL.

    .venv/bin/python bench/jobs_workers.py [--jobs 150] [--workers 1,2,4] [--slots 1] [--s3 rclone|moto]

For each worker count: a fresh PostgreSQL database, a RabbitMQ vhost and
an S3 server (C{rclone serve s3} by default, or moto); one relay-cloud that queues jobs (role dispatch), the workers (role
worker, C{--slots} each), and a relay-edge. With the workers stopped, N
jobs of the kind C{tick} (C{sh -c 'echo TAG >> side file'}) are submitted
through the edge's API and wait, queued, on relay.jobs; then the workers
start. The rate is N over the span from the first run's start to the last
run's end, as the registry recorded them (the workers' own start-up is not
counted). Every job must succeed exactly once: the side file has one line
per run, which is checked. Beside the rate: the CPU time per job of relay's
processes and moto (the workers with their shepherds and commands, the
dispatcher, the edge; not PostgreSQL or RabbitMQ) while the jobs ran, and
how many cores that kept busy, and how many cores the whole machine kept
busy meanwhile (PostgreSQL, RabbitMQ and any other work included): a row
whose machine busy approaches the cores there are is bound by the CPU, not
by relay.
The CPU per job split by process: the workers (with their shepherds and
commands), the dispatcher, the edge, the S3 server, the PostgreSQL backends
connected to the run's database, and RabbitMQ (shared with other vhosts:
an upper bound).
And where a slot's time goes: the median run (the registry's start to end
of a job: fetching inputs, the command, storing results and the log) and
what a slot spends per job outside runs (taking the next delivery,
claiming it, recording the outcome).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.testing.job_workers import WorkersWorld, registry_rows  # noqa: E402
from relay.testing.postgresql import temporary_database  # noqa: E402
from relay.testing.s3servers import S3Server, start_moto, start_rclone  # noqa: E402

#: The processes the CPU per job is split into, in the table's order.
PARTS = ("workers", "dispatch", "edge", "s3", "pg", "rabbit")


def start_s3(kind: str, directory: Path) -> S3Server:
    if kind == "moto":
        return start_moto()
    root = directory / "s3"
    root.mkdir(parents=True, exist_ok=True)
    return start_rclone(root)


def run(workers: int, jobs: int, slots: int, directory: Path, s3_kind: str = "rclone") -> dict[str, object]:
    s3 = start_s3(s3_kind, directory / f"s3-{workers}")
    try:
        with temporary_database("relay_bench") as dsn:
            world = WorkersWorld(directory / f"workers-{workers}", s3, dsn, workers=workers, slots=slots,
                                 lease=15.0)
            try:
                world.start(workers=False)
                tags = [f"job-{n}" for n in range(jobs)]
                submit_started = time.monotonic()
                ids = [world.submit("tick", tag=tag) for tag in tags]
                submit_seconds = time.monotonic() - submit_started
                world.wait_for("every job queued", lambda: _count(dsn, "queued") == jobs, 120)
                print(f"{workers} worker(s): {jobs} jobs queued ({submit_seconds:.1f} s to submit)", file=sys.stderr)
                world.start_workers()
                world.wait_for("the first run", lambda: _count(dsn, "queued") < jobs, 60)
                parts = {
                    "workers": [w.process.pid for w in world.workers if w.process is not None],
                    "dispatch": [world.dispatcher.process.pid] if world.dispatcher.process else [],
                    "edge": [world.edge.process.pid] if world.edge.process else [],
                    "s3": [s3.process.pid],
                    "pg": _backends(dsn),
                    "rabbit": _rabbitmq(),
                }
                cpu_before = {part: sum(_cpu(pid) for pid in pids) for part, pids in parts.items()}
                machine_before, wall_before = _machine(), time.monotonic()
                world.wait_for("every job finished", lambda: _count(dsn, "succeeded") + _count(dsn, "failed")
                               == jobs, 60 + jobs * 2)
                split = {part: (sum(_cpu(pid) for pid in pids) - cpu_before[part]) / jobs * 1000
                         for part, pids in parts.items()}
                # relay's processes and the S3 server, as the column always counted.
                cpu = sum(split[part] for part in ("workers", "dispatch", "edge", "s3")) * jobs / 1000
                machine = (_machine() - machine_before) / (time.monotonic() - wall_before)
                rows = registry_rows(dsn, "SELECT min(started_at) AS first, max(finished_at) AS last, "
                                          "count(*) AS n FROM jobs WHERE state = 'succeeded'")
                span = float(rows[0]["last"]) - float(rows[0]["first"])
                runs_ms = sorted(1000 * (float(r["finished_at"]) - float(r["started_at"])) for r in registry_rows(
                    dsn, "SELECT started_at, finished_at FROM jobs WHERE state = 'succeeded'"))
                runs = Counter(world.side_lines())
                per_worker = {w.log_path.parent.name: w.log_text().count(" starts on ") for w in world.workers}
                return {
                    "workers": workers, "slots": slots, "jobs": len(ids), "succeeded": int(rows[0]["n"]),
                    "seconds": span, "per_minute": jobs / span * 60 if span > 0 else None,
                    "duplicates": sum(count - 1 for count in runs.values() if count > 1),
                    "lost": sum(1 for tag in tags if tag not in runs),
                    "spread": "/".join(str(per_worker[name]) for name in sorted(per_worker)),
                    "cpu_ms": cpu / jobs * 1000, "cores": cpu / span if span > 0 else None,
                    "machine": machine, "split": split, "s3": s3.kind,
                    "run_ms": runs_ms[len(runs_ms) // 2],
                    # A slot's time per job that is not the run itself.
                    "outside_ms": span * 1000 * workers * slots / jobs - sum(runs_ms) / len(runs_ms),
                }
            finally:
                world.stop()
    finally:
        s3.stop()


def _cpu(pid: int) -> float:
    """
    CPU seconds of a process and of its children it has waited for (a
    worker's shepherds and commands); 0 for one that is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _machine() -> float:
    """
    CPU seconds the whole machine spent busy (every process: PostgreSQL,
    RabbitMQ and other work too), from C{/proc/stat}.
    """
    with open("/proc/stat") as f:
        fields = [int(value) for value in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _backends(dsn: str) -> list[int]:
    """
    The PostgreSQL backends connected to the run's database (the clouds'
    and the edge's pools are open by now; this script's own short
    connections are not among them).
    """
    rows = registry_rows(dsn, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                              "AND pid <> pg_backend_pid()")
    return [int(r["pid"]) for r in rows]


def _rabbitmq() -> list[int]:
    """
    RabbitMQ's Erlang VM (C{beam.smp}), if this user can see it.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _count(dsn: str, state: str) -> int:
    return int(registry_rows(dsn, "SELECT count(*) AS n FROM jobs WHERE state = ?", (state,))[0]["n"])


def table(results: list[dict[str, object]]) -> str:
    base = next((r["per_minute"] for r in results if r["workers"] == 1), None)
    header = ["workers", "slots", "jobs", "succeeded", "seconds", "jobs/min", "vs 1 worker", "runs per worker",
              "duplicates", "lost", "CPU ms/job", "cores busy", "machine busy", "run ms", "outside ms",
              "CPU ms/job: " + "/".join(PARTS)]
    rows = [header]
    for r in results:
        rate = r["per_minute"]
        ratio = f"{rate / base:.2f}" if isinstance(rate, float) and isinstance(base, float) else "-"
        rows.append([str(r["workers"]), str(r["slots"]), str(r["jobs"]), str(r["succeeded"]),
                     f"{r['seconds']:.1f}", f"{rate:.0f}" if isinstance(rate, float) else "-", ratio,
                     str(r["spread"]), str(r["duplicates"]), str(r["lost"]), f"{r['cpu_ms']:.0f}",
                     f"{r['cores']:.2f}" if isinstance(r["cores"], float) else "-",
                     f"{r['machine']:.2f}",
                     f"{r['run_ms']:.0f}", f"{r['outside_ms']:.0f}",
                     "/".join(f"{r['split'][part]:.0f}" for part in PARTS)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--slots", type=int, default=1, help="jobs each worker runs at once")
    parser.add_argument("--s3", choices=("rclone", "moto"), default="rclone",
                        help="the S3 server: rclone serve s3 (Go) or moto (Python)")
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="relay-bench-jobs-") as d:
        for workers in [int(w) for w in args.workers.split(",")]:
            results.append(run(workers, args.jobs, args.slots, Path(d), args.s3))
    print(table(results))
    print(f"\nS3 server: {results[0]['s3'] if results else args.s3}; CPU ms/job counts the workers, dispatch, "
          "edge and s3; rabbit is all of RabbitMQ (other vhosts too)")
    print(f"\nload average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; "
          f"{os.cpu_count()} CPUs")
    bad = [r for r in results if r["duplicates"] or r["lost"] or r["succeeded"] != r["jobs"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
