"""
bench/web: how fast the edge's pages and API answer, with the link to the
cloud up and cut, beside the same requests reached through the emulated
China link (what people had before relay: the platform's pages served from
across the link).

The parts are real (relay.testing.web_world): RabbitMQ (a vhost of the
run's own), moto's S3 server, ``relay-cloud`` and ``relay-edge`` as twistd
processes, one user with an API key and ``--projects`` projects of
``--files`` files each in the registry.  The edge reaches the broker
through relay.testing.linkemu in this process, so that the link can be cut
for real: the emulator stops listening and resets its connections, and the
edge's reconnects are refused until it listens again.

Three scenarios, each timing ``--requests`` GETs per route (``--china-
requests`` through the China link) on one persistent HTTP/1.1 connection,
the API key as a Bearer header, after a few untimed ones:

  1. **edge, link up**: loopback to the edge;
  2. **edge, link down**: the same, once ``/api/v1/status`` says ``down``;
  3. **China link (before)**: through an emulator of the China profile
     (300 ms RTT, 512 KiB/s per connection, 4 MiB/s for the link) in front
     of the same edge.

Routes: ``GET /api/v1/projects``, ``/api/v1/projects/<id>`` (a project with
its members and files), ``/api/v1/jobs``, ``/api/v1/status`` and the page
``/``.  Target (issue 13): p99 under 50 ms at the edge, link up and down.
The script exits 1 when a request failed.

    python bench/web.py                 # about 1 min
    python bench/web.py --requests 100 --china-requests 10
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import Target, format_targets  # noqa: E402
from relay.testing.linkemu import LinkEmulator, LinkProfile  # noqa: E402
from relay.testing.transfer_world import AMQP_PORT  # noqa: E402
from relay.testing.web_world import WebWorld  # noqa: E402

KiB = 1024
CHINA = LinkProfile(latency_ms=150, rate_bytes_per_s=512 * KiB, aggregate_bytes_per_s=4096 * KiB)
TARGET_P99_MS = 50.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def timed(port: int, path: str, headers: dict[str, str], count: int, warmup: int = 3) -> list[float]:
    """
    C{count} GETs of C{path} on one connection, each read whole; their
    times in milliseconds.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples = []
    try:
        for i in range(warmup + count):
            started = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {body[:200]!r}")
            if i >= warmup:
                samples.append(elapsed)
    finally:
        connection.close()
    return samples


async def until_link(world: WebWorld, state: str, timeout: float = 60.0) -> None:
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while True:
        code, body = await deferToThread(world.get, "/api/v1/status")
        if code == 200 and body["link"]["state"] == state:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the link did not become {state} within {timeout}s: {body}")
        await deferLater(reactor, 0.2, lambda: None)


def routes(world: WebWorld) -> list[tuple[str, str]]:
    return [
        ("GET /api/v1/projects", "/api/v1/projects"),
        ("GET /api/v1/projects/<id>", f"/api/v1/projects/{world.project_ids[0]}"),
        ("GET /api/v1/jobs", "/api/v1/jobs"),
        ("GET /api/v1/status", "/api/v1/status"),
        ("GET / (the page)", "/"),
    ]


async def measure(port: int, world: WebWorld, count: int) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {world.api_key}"}
    found = {}
    for name, path in routes(world):
        found[name] = await deferToThread(timed, port, path, headers, count)
    return found


def table(results: dict[str, dict[str, list[float]]], names: list[str]) -> str:
    scenarios = list(results)
    header = ["route"] + [f"{s} p50 / p99 (ms)" for s in scenarios] + ["China p99 / edge-up p99"]
    rows = [header, ["---"] * len(header)]
    for name in names:
        row = [name]
        for scenario in scenarios:
            samples = results[scenario][name]
            row.append(f"{statistics.median(samples):.1f} / {percentile(samples, 99):.1f}")
        up, china = results[scenarios[0]][name], results[scenarios[-1]][name]
        row.append(f"{percentile(china, 99) / percentile(up, 99):.0f}x")
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    amqp = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{AMQP_PORT}", LinkProfile())
    await amqp.start()
    with tempfile.TemporaryDirectory(prefix="relay-bench-web-") as tmp:
        world = WebWorld(Path(tmp) / "world", amqp_port=amqp.port, projects=args.projects, files=args.files,
                         objects=False)
        china = None
        try:
            say(f"starting cloud and edge ({args.projects} projects x {args.files} files)")
            await deferToThread(world.start, 120.0)
            china = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{world.edge_port}", CHINA)
            await china.start()
            results: dict[str, dict[str, list[float]]] = {}
            await until_link(world, "up")
            say("edge, link up")
            results["edge, link up"] = await measure(world.edge_port, world, args.requests)
            say("cutting the link (the emulator stops listening and resets its connections)")
            await amqp.close_listener()
            amqp.reset_all()
            await until_link(world, "down")
            say("edge, link down")
            results["edge, link down"] = await measure(world.edge_port, world, args.requests)
            say("China link (before)")
            results["China link"] = await measure(china.port, world, args.china_requests)
        finally:
            if china is not None:
                await china.stop()
            await deferToThread(world.stop)
            await amqp.stop()
    names = [name for name, _ in routes(world)]
    load = os.getloadavg()[0]
    print(f"\n{args.requests} requests per route at the edge, {args.china_requests} through the China link "
          f"({args.projects} projects x {args.files} files; load average {load:.2f})\n")
    print(table(results, names))
    targets = [
        Target(f"p99 under {TARGET_P99_MS:g} ms at the edge, {scenario}", worst < TARGET_P99_MS,
               f"worst route p99 {worst:.1f} ms")
        for scenario in ("edge, link up", "edge, link down")
        for worst in [max(percentile(results[scenario][n], 99) for n in names)]
    ]
    print()
    print(format_targets(targets))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="timed GETs per route at the edge")
    parser.add_argument("--china-requests", type=int, default=20, help="timed GETs per route via the China link")
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--files", type=int, default=25, help="files per project")
    return parser.parse_args()


if __name__ == "__main__":
    react(lambda reactor, args: ensureDeferred(main(reactor, args)), (parse(),))
