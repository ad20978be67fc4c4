"""
bench/jobs: how live a job is at the edge.

The parts are the real ones, as in the end-to-end tests: RabbitMQ (a vhost
of the run's own), moto, ``relay-cloud`` (the worker) and ``relay-edge``
as twistd processes, and the link emulator of relay.testing.linkemu in
this process between the edge and the broker.  Per scenario (loopback,
then 300 ms RTT through the emulator), jobs of a kind that prints a line
with the time every 100 ms run one after the other, and the script follows
the edge's ``/api/events``:

  - **log line -> /api/events**: from the job writing a line (its own
    timestamp in the line) to the edge's event stream delivering it to
    this script (the time the frame arrived);
  - **submit -> command start**: from ``POST /api/v1/jobs`` to the job's
    command printing its first line;
  - **submit -> edge sees running**: to the ``job.state`` event saying
    ``running``.

All on one machine, so the clocks compared are one.  Target (issue 11):
the log line's p99 under 1 s + one RTT.  The workers' throughput is
measured by another script.

    python bench/jobs.py                 # 5 jobs of 30 lines per scenario, about 2 min
    python bench/jobs.py --jobs 2        # quicker
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.testing.linkemu import LinkProfile  # noqa: E402
from relay.testing.live_jobs import EventStream, Frame  # noqa: E402
from relay.testing.s3servers import start_moto  # noqa: E402

# The test harness's world (both processes, the broker's vhost, moto and
# the emulated links), as the end-to-end tests use it.
from tests.edge.transfer.world import TransferWorld  # noqa: E402

TICKER = (
    "import time\n"
    "for i in range(LINES):\n"
    "    print('tick %d %.6f' % (i, time.time()), flush=True)\n"
    "    time.sleep(0.1)\n"
)


def jobs_toml(lines: int) -> str:
    shipped = (ROOT / "etc" / "cloud.toml").read_text().split("\n[jobs]\n", 1)[1]
    command = ["python3", "-I", "-c", TICKER.replace("LINES", str(lines))]
    return f"[jobs]\n{shipped}\n[jobs.kinds.ticker]\ncommand = {json.dumps(command)}\nresults = []\n"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


async def sleep(reactor: Any, seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def wait_for(reactor: Any, what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/jobs: {what}: not within {timeout} s")
        await sleep(reactor, 0.05)


async def scenario(reactor: Any, name: str, profile: LinkProfile, args: argparse.Namespace, s3: Any,
                   work: Path) -> list[tuple[str, str, list[float], str]]:
    root = work / name.replace(" ", "-")
    root.mkdir()
    world = TransferWorld(root, s3, s3_link=LinkProfile(), amqp_link=profile, cloud_toml=jobs_toml(args.lines))
    try:
        await world.start()
        upload_id, _ = world.stage(1000, 1)
        world.edge.start()
        await world.wait_done([upload_id], timeout=120)
        print(f"{name}: edge and cloud up, input in S3", file=sys.stderr)
        stream = EventStream(reactor, f"http://127.0.0.1:{world.edge_port}", world.api_key)
        await stream.open()
        latencies: list[float] = []
        starts: list[float] = []
        running: list[float] = []
        for number in range(args.jobs):
            submitted = time.time()
            code, answer = await world.api("POST", "/api/v1/jobs", {
                "project_id": world.project, "kind": "ticker", "parameters": {}, "inputs": [upload_id],
            })
            if code != 202:
                raise SystemExit(f"bench/jobs: submit answered {code}: {answer}")
            job_id = answer["job"]["id"]

            def ended(job_id: str = job_id) -> bool:
                return any(f.data["eof"] for f in stream.of("job.log", job_id))

            await wait_for(reactor, f"job {number} done", ended, 120)
            frames = stream.of("job.log", job_id)
            stamps = [(frame, line) for frame in frames for line in frame.data["text"].splitlines()
                      if line.startswith("tick ")]
            latencies += [frame.received - float(line.split()[2]) for frame, line in stamps]
            starts.append(float(stamps[0][1].split()[2]) - submitted)
            seen: list[Frame] = [f for f in stream.of("job.state", job_id) if f.data["state"] == "running"]
            if seen:
                running.append(seen[0].received - submitted)
            print(f"{name}: job {number + 1}/{args.jobs}: {len(stamps)} lines", file=sys.stderr)
        stream.close()
        rtt = 2 * profile.latency_ms
        target = f"p99 < {1000 + rtt:g} ms"
        return [
            (name, "log line -> /api/events", latencies, target),
            (name, "submit -> command start", starts, ""),
            (name, "submit -> edge sees running", running, ""),
        ]
    finally:
        await world.stop()


def table(rows: list[tuple[str, str, list[float], str]]) -> str:
    header = ("scenario", "measure", "n", "median ms", "p99 ms", "max ms", "target", "met")
    lines = [header]
    for name, measure, values, target in rows:
        if not values:
            lines.append((name, measure, "0", "-", "-", "-", target, "no"))
            continue
        p99 = percentile(values, 0.99) * 1000
        met = ""
        if target:
            met = "yes" if p99 < float(target.split("<")[1].split()[0]) else "NO"
        lines.append((name, measure, str(len(values)), f"{statistics.median(values) * 1000:.0f}", f"{p99:.0f}",
                      f"{max(values) * 1000:.0f}", target, met))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    s3 = start_moto()
    rows: list[tuple[str, str, list[float], str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="relay-bench-jobs-") as tmp:
            for name, profile in (
                ("loopback", LinkProfile()),
                (f"{2 * args.latency_ms:g} ms RTT", LinkProfile(latency_ms=args.latency_ms)),
            ):
                rows += await scenario(reactor, name, profile, args, s3, Path(tmp))
    finally:
        s3.stop()
    print(table(rows))
    print(f"\n{args.jobs} jobs of {args.lines} lines per scenario; load average {Path('/proc/loadavg').read_text().split()[:3]}")
    if any(row.endswith("NO") for row in table(rows).splitlines()):
        raise SystemExit(1)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=5, help="jobs per scenario, one after the other")
    parser.add_argument("--lines", type=int, default=30, help="lines per job (one every 100 ms)")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="one-way delay of the emulated link")
    return parser.parse_args(argv)


if __name__ == "__main__":
    react(lambda reactor, args: ensureDeferred(main(reactor, args)), (parse(),))
