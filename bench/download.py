"""
bench/download: files coming back to the edge, beside what people would
otherwise use.

The parts are the real ones, as in the end-to-end tests (the harness of
tests/edge/transfer/world.py): RabbitMQ (a vhost of the run's own), moto's
S3 server, ``relay-cloud`` (also the job worker) and two ``relay-edge``
twistd processes, and relay.testing.linkemu in this process between the
edges and S3 and between the edges and the broker (one shared bottleneck:
the S3 GETs and the AMQP link share the aggregate cap).  Three scenarios,
one run each:

  1. **cached**: a file uploaded at edge A (so it moved from the spool into
     A's encrypted cache) downloaded from A on loopback by 1, then 8
     concurrent ``curl`` processes (each fetches the whole file to
     /dev/null), beside Debian's nginx serving the same plaintext file
     from a temporary directory (a config of this script's own, sendfile
     on, a free loopback port).  The edge's peak RSS is VmHWM of
     /proc/<pid>/status of edge A, which took the uploads and moved them
     to S3 before (``--restart`` restarts it first; its cache survives);
     the RSS the uploads left is printed too.
  2. **uncached, China link**: a file staged at edge A and moved to S3 on
     a clean link; then the link gets the China profile (300 ms RTT, 512
     KiB/s per connection, a reset every 20 s on average per connection,
     4 MiB/s for the whole link) and edge B, which holds nothing, serves
     it to a loopback client (timed from the GET to the last byte; the
     bytes hashed).  Beside it, through an emulator of the same profile
     sharing the same aggregate cap: one presigned GET in one stream,
     resumed with ``Range`` after each reset (a patient user's client), and
     boto3's ``download_file`` with its default TransferConfig, started
     over after a failure.  Each baseline runs until it finishes or its cap
     passes (5.5x, resp. 2x edge B's time unless ``--cap``).
  3. **job result**: a job kind that writes one file of ``--result-mib``;
     from the job's success in the cloud's registry (``finished_at``) to
     the result being ``cached`` at edge A (prefetched), on the China link.

Targets (issue 12): the cached edge at least 0.5x nginx's throughput with
an RSS under 200 MiB; the uncached fetch at least 5x the single stream and
1.5x download_file, 100 % completion.  A missed speed target is reported;
the script exits 1 only when relay did not deliver the right bytes.

    python bench/download.py            # 1 GiB, 256 MiB, 50 MiB: about 15 min
    python bench/download.py --quick    # tiny sizes, about 2 min
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import Target, format_targets  # noqa: E402
from relay.testing.linkemu import LinkEmulator, LinkProfile  # noqa: E402
from relay.testing.s3servers import S3Server, free_port, start_moto  # noqa: E402
from relay.testing.transfer_world import MiB, pattern, read_db  # noqa: E402

# The test harness's world, as the end-to-end tests use it.
from tests.edge.transfer.world import TransferWorld  # noqa: E402

NGINX = "/usr/sbin/nginx"

RESULT_JOB = "import os\nwith open('result.bin', 'wb') as f:\n    f.write(os.urandom(SIZE))\n"


@dataclass
class Row:
    scenario: str
    contender: str
    measured: str
    nbytes: int
    seconds: float | None
    completed: bool
    notes: str = ""
    #: How long it was allowed (for a contender that did not finish).
    limit: float | None = None

    @property
    def mb_s(self) -> float | None:
        return self.nbytes / self.seconds / 1e6 if self.seconds else None


def china(args: argparse.Namespace) -> LinkProfile:
    return LinkProfile(
        latency_ms=args.latency_ms,
        rate_bytes_per_s=args.rate_kib * 1024,
        aggregate_bytes_per_s=args.aggregate_mib * MiB,
        reset_mean_s=args.reset_mean_s or None,
    )


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await deferLater(reactor, seconds, lambda: None)


async def wait_for(what: str, predicate: Any, timeout: float, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench/download: {what}: not within {timeout:.0f} s")
        await sleep(step)


def cache_rows(edge_root: Path) -> list[Any]:
    try:
        return read_db(edge_root / "edge.db", "SELECT * FROM cache_files")
    except Exception:
        return []


def cached(edge_root: Path, file_id: str) -> bool:
    return any(r["file_id"] == file_id and r["state"] == "cached" for r in cache_rows(edge_root))


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# Scenario 1: nginx.


class Nginx:
    """Debian's nginx in the foreground with a config, pid, logs and temp dirs of its own."""

    def __init__(self, root: Path, www: Path, workers: str) -> None:
        self.root = root
        self.port = free_port()
        self.workers = workers
        for name in ("logs", "tmp"):
            (root / name).mkdir(parents=True, exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temps = "".join(f"    {kind}_temp_path {root}/tmp/{kind};\n"
                        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.config = root / "nginx.conf"
        self.config.write_text(
            f"{user}worker_processes {workers};\npid {root}/nginx.pid;\nerror_log {root}/logs/error.log;\n"
            "events { worker_connections 256; }\n"
            "http {\n    access_log off;\n    sendfile on;\n    tcp_nopush on;\n"
            "    default_type application/octet-stream;\n" + temps +
            f"    server {{\n        listen 127.0.0.1:{self.port};\n        root {www};\n    }}\n}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [NGINX, "-c", str(self.config), "-p", str(self.root), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=(self.root / "logs" / "stderr.log").open("wb"),
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                http_get(self.port, "/", {}, lambda _: None)
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "logs" / "stderr.log").read_text()
                    raise SystemExit(f"nginx did not start: {log}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: nginx's fast shutdown
            self.process.wait(timeout=10)


def http_get(port: int, path: str, headers: dict[str, str], sink: Any) -> tuple[int, int]:
    """One GET on loopback; C{sink(block)} gets the body; returns (status, bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        got = 0
        while block := response.read(1 << 20):
            got += len(block)
            sink(block)
        return response.status, got
    finally:
        conn.close()


def verified_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, int, str]:
    digest = hashlib.sha256()
    status, got = http_get(port, path, headers, digest.update)
    return status, got, digest.hexdigest()


def curls(port: int, path: str, headers: dict[str, str], clients: int, size: int) -> tuple[float, str | None]:
    """
    C{clients} curl processes at once, each GETting the whole file to
    /dev/null; returns the wall time until the last one ended and a
    problem, if any (a status other than 200, a short body).
    """
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
               *(f"-H{k}: {v}" for k, v in headers.items()), f"http://127.0.0.1:{port}{path}"]
    started = time.monotonic()
    running = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(clients)]
    outputs = [p.communicate() for p in running]
    seconds = time.monotonic() - started
    for process, (out, err) in zip(running, outputs, strict=True):
        if process.returncode != 0 or out.decode().split() != ["200", str(size)]:
            return seconds, f"curl {process.returncode}: {out.decode()} {err.decode()[:200]}"
    return seconds, None


async def scenario_cached(args: argparse.Namespace, world: TransferWorld, work: Path, file_id: str,
                          sha256: str, size: int, rows: list[Row]) -> dict[str, Any]:
    name = f"cached {fmt_size(size)}"
    www = Path(tempfile.mkdtemp(prefix="relay-bench-nginx-www-"))
    www.chmod(0o755)
    plain = www / "file.bin"
    with plain.open("wb") as f:
        for block in pattern(args.seed, size):
            f.write(block)
    nginx = Nginx(work / "nginx", www, args.nginx_workers)
    await deferToThread(nginx.start)
    auth = {"Authorization": f"Bearer {world.api_key}"}
    edge_path = f"/api/v1/files/{file_id}/content"
    assert world.edge.process is not None
    info: dict[str, Any] = {"rss_after_transfer_kib": vm_rss_kib(world.edge.process.pid), "restarted": False}
    if args.restart:
        # To see the download path's memory alone: restart (the cache
        # survives), then measure.
        await deferToThread(world.edge.stop)
        world.edge.start()
        await wait_for("edge A back", lambda: _listed(world.edge_port, world.api_key, file_id), 60, 0.2)
        info["restarted"] = True
    assert world.edge.process is not None
    pid = world.edge.process.pid
    try:
        # Both once, untimed and hashed: the right bytes, and a warm page cache for both.
        for label, port, path, headers in (("edge", world.edge_port, edge_path, auth),
                                           ("nginx", nginx.port, "/file.bin", {})):
            status, got, digest = await deferToThread(verified_get, port, path, headers)
            if (status, got, digest) != (200, size, sha256):
                raise SystemExit(f"bench/download: {label} served {status}, {got} bytes, sha256 {digest}")
        info["rss_before_kib"] = vm_rss_kib(pid)
        for clients in args.clients:
            for contender, port, path, headers in (("nginx (plaintext, sendfile)", nginx.port, "/file.bin", {}),
                                                   ("relay edge (encrypted cache)", world.edge_port, edge_path,
                                                    auth)):
                say(f"{name}: {contender}, {clients} client(s) ...")
                seconds, problem = await deferToThread(curls, port, path, headers, clients, size)
                notes = f"{clients} x curl"
                if contender.startswith("relay"):
                    peak = vm_hwm_kib(pid)
                    info.setdefault("rss_peak_kib", {})[clients] = peak
                    notes += f"; edge peak RSS {peak / 1024:.0f} MiB"
                if problem:
                    notes += f"; FAILED: {problem}"
                rows.append(Row(f"{name}, {clients} client(s)", contender, "all clients got every byte",
                                clients * size, None if problem else seconds, problem is None, notes))
    finally:
        await deferToThread(nginx.stop)
        shutil.rmtree(www, ignore_errors=True)
    return info


# Scenario 2: uncached through the China link.


def single_stream(url: str, size: int, deadline: float, stall_s: float) -> tuple[bool, int, str, int]:
    """
    One presigned GET in one stream; after a reset (or a stall of
    C{stall_s}) it asks again for the rest with C{Range}, as a patient
    user's client would, until C{deadline}.  Returns (done, bytes, sha256,
    requests).
    """
    parts = urllib.parse.urlsplit(url)
    target = parts.path + ("?" + parts.query if parts.query else "")
    digest = hashlib.sha256()
    got, requests = 0, 0
    while got < size and time.monotonic() < deadline:
        requests += 1
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=stall_s)
        try:
            conn.request("GET", target, headers={"Range": f"bytes={got}-"} if got else {})
            response = conn.getresponse()
            if response.status not in (200, 206):
                raise OSError(f"status {response.status}")
            while got < size and time.monotonic() < deadline:
                block = response.read1(256 << 10)
                if not block:
                    break
                digest.update(block)
                got += len(block)
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
        finally:
            conn.close()
    return got == size, got, digest.hexdigest(), requests


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


async def scenario_china(args: argparse.Namespace, world: TransferWorld, work: Path, file_id: str,
                         sha256: str, size: int, rows: list[Row]) -> None:
    from twisted.internet import reactor

    name = f"uncached {fmt_size(size)}, China link"
    port = free_port()
    edge_b = world.another_edge("edge-b", port, prefetch_max_size=0)
    edge_b.start()
    try:
        await wait_for("edge B replicated the files", lambda: _listed(port, world.api_key, file_id), 120, 0.3)
        say(f"{name}: edge B up, fetching ...")
        s3_before = world.s3_link.counters.snapshot()
        started = time.monotonic()
        status, got, digest = await deferToThread(
            verified_get, port, f"/api/v1/files/{file_id}/content", {"Authorization": f"Bearer {world.api_key}"})
        seconds = time.monotonic() - started
        ok = (status, got, digest) == (200, size, sha256)
        await wait_for("edge B cached the file", lambda: cached(edge_b.cwd / "edge", file_id), 60)
        assert edge_b.process is not None
        metrics = await deferToThread(_metrics, port)
        resets = world.s3_link.counters.resets_injected - s3_before.resets_injected
        connections = world.s3_link.counters.connections_accepted - s3_before.connections_accepted
        moved = world.s3_link.counters.bytes_to_client - s3_before.bytes_to_client
        notes = (f"{connections} S3 connections, {resets} resets injected, "
                 f"{metrics.get('relay_download_fetch_retries', 0):.0f} ranges resumed, {moved / size:.2f}x bytes over the link, "
                 f"edge B peak RSS {vm_hwm_kib(edge_b.process.pid) / 1024:.0f} MiB, cached and verified")
        if not ok:
            notes = f"WRONG: status {status}, {got} bytes, sha256 {digest[:12]}; " + notes
        rows.append(Row(name, "relay edge B (parallel ranged GETs)", "GET to last byte, sha256 right", size,
                        seconds if ok else None, ok, notes, args.cap))
    finally:
        await deferToThread(edge_b.stop)
    edge_seconds = rows[-1].seconds
    key = world.object_key(file_id)
    for how, factor in (("single", 5.5), ("download_file", 2.0)):
        limit = args.cap or (max(args.min_cap, factor * edge_seconds) if edge_seconds else 900.0)
        # Its own emulator with the same profile, sharing the S3 link's
        # aggregate cap; closed at the cap, which leaves edge B's alone.
        link = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{world.s3.port}", china(args),
                            random.Random(args.seed + 7), shares_link_with=world.s3_link)
        await link.start()
        client = world.s3.client(f"http://127.0.0.1:{link.port}")
        started = time.monotonic()
        try:
            if how == "single":
                say(f"{name}: one presigned GET in one stream (at most {limit:.0f} s) ...")
                url = client.generate_presigned_url("get_object", Params={"Bucket": world.s3.bucket, "Key": key},
                                                    ExpiresIn=3600)
                done, got, digest, requests = await deferToThread(single_stream, url, size, started + limit,
                                                                  args.stall_s)
                seconds = time.monotonic() - started
                ok = done and digest == sha256
                notes = (f"{requests} request(s) (Range after each cut), {link.counters.resets_injected} resets, "
                         f"{got / size:.0%} received")
                rows.append(Row(name, "one presigned GET, one stream, resumed", "last byte, sha256 right", size,
                                seconds if ok else None, ok, notes, limit))
            else:
                say(f"{name}: boto3 download_file, default TransferConfig (at most {limit:.0f} s) ...")
                target = work / "download_file.bin"
                attempts, error = 0, ""
                capped = {"now": False}

                async def cap(limit: float = limit, capped: dict[str, bool] = capped,
                              link: LinkEmulator = link) -> None:
                    await sleep(limit)
                    capped["now"] = True
                    await link.close_listener()
                    link.reset_all()

                capper = Deferred.fromCoroutine(cap())
                ok = False
                while not capped["now"]:
                    attempts += 1
                    try:
                        await deferToThread(client.download_file, world.s3.bucket, key, str(target))
                        ok = True
                        break
                    except Exception as e:
                        error = f"{type(e).__name__}: {str(e)[:80]}"
                        say(f"  download_file attempt {attempts} failed after {time.monotonic() - started:.0f} s: "
                            f"{error}")
                seconds = time.monotonic() - started
                capper.cancel()
                capper.addErrback(lambda f: None)
                ok = ok and await deferToThread(file_sha256, target) == sha256
                notes = f"{attempts} attempt(s), {link.counters.resets_injected} resets"
                if not ok:
                    notes += f"; last: {error[:60]}"
                rows.append(Row(name, "boto3 download_file (default TransferConfig)", "file written, sha256 right",
                                size, seconds if ok else None, ok, notes, limit))
                target.unlink(missing_ok=True)
        finally:
            await link.stop()


def _metrics(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            values[name] = float(value)
    return values


def _listed(port: int, api_key: str, file_id: str) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/files", headers={"Authorization": f"Bearer {api_key}"})
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status != 200:
            return False
        return any(f["id"] == file_id and f["state"] == "stored" for f in json.loads(body)["files"])
    except (OSError, ValueError, KeyError):
        return False


# Scenario 3: a job's result prefetched.


def jobs_toml(size: int) -> str:
    shipped = (ROOT / "etc" / "cloud.toml").read_text().split("\n[jobs]\n", 1)[1]
    command = ["python3", "-I", "-c", RESULT_JOB.replace("SIZE", str(size))]
    return f"[jobs]\n{shipped}\n[jobs.kinds.bigresult]\ncommand = {json.dumps(command)}\nresults = [\"result.bin\"]\n"


async def scenario_result(args: argparse.Namespace, world: TransferWorld, input_id: str, size: int,
                          rows: list[Row]) -> None:
    name = f"job result {fmt_size(size)}, China link"
    cloud_db = world.root / "cloud" / "cloud.db"
    code, answer = await world.api("POST", "/api/v1/jobs", {
        "project_id": world.project, "kind": "bigresult", "parameters": {}, "inputs": [input_id],
    })
    if code != 202:
        raise SystemExit(f"bench/download: job submit answered {code}: {answer}")
    job_id = answer["job"]["id"]
    say(f"{name}: job {job_id} submitted")

    def job() -> Any:
        found = read_db(cloud_db, "SELECT state, finished_at, result_files FROM jobs WHERE id = ?", (job_id,))
        return found[0] if found else None

    await wait_for("the job ended", lambda: (j := job()) is not None and j["state"] in ("succeeded", "failed"),
                   300, 0.05)
    row = job()
    if row["state"] != "succeeded":
        raise SystemExit(f"bench/download: the job {row['state']}")
    known = {r["file_id"] for r in cache_rows(world.edge_dir) if r["size"] != size}

    def result_cached() -> bool:
        return any(r["file_id"] not in known and r["size"] == size and r["state"] == "cached"
                   for r in cache_rows(world.edge_dir))

    s3_before = world.s3_link.counters.snapshot()
    await wait_for("the result cached at the edge", result_cached, args.cap or 600, 0.02)
    seconds = time.time() - row["finished_at"]
    resets = world.s3_link.counters.resets_injected - s3_before.resets_injected
    ideal = size / (args.aggregate_mib * MiB)
    rows.append(Row(name, "relay edge A (prefetch of results)", "job succeeded -> cached at the edge", size,
                    seconds, True, f"{resets} resets; the whole link's cap alone takes {ideal:.1f} s"))


# The table.


def fmt_size(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):g} GiB" if nbytes >= 1 << 30 else f"{nbytes / MiB:g} MiB"


def table(rows: list[Row]) -> str:
    header = ("scenario", "contender", "done when", "seconds", "MB/s", "done", "vs baseline", "notes")
    lines = [header]
    for row in rows:
        seconds = f"{row.seconds:.2f}" if row.seconds is not None else f">{row.limit or 0:.0f}"
        rate = f"{row.mb_s:.1f}" if row.mb_s is not None else "-"
        versus = "-"
        if row.contender.startswith("relay") and row.seconds:
            others = [o for o in rows if o.scenario == row.scenario and not o.contender.startswith("relay")]
            cells = []
            for other in others:
                short = other.contender.split(" (")[0].replace("one presigned GET, one stream, resumed",
                                                               "single stream")
                if other.seconds:
                    cells.append(f"{other.seconds / row.seconds:.2f}x {short}")
                else:
                    cells.append(f">{(other.limit or 0) / row.seconds:.2f}x {short}")
            versus = ", ".join(cells) or "-"
        lines.append((row.scenario, row.contender, row.measured, seconds, rate, "yes" if row.completed else "NO",
                      versus, row.notes))
    numeric = {3, 4}
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths,
                                                                                           strict=True))).rstrip()
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def targets(rows: list[Row], cached_info: dict[str, Any], args: argparse.Namespace) -> list[Target]:
    found: list[Target] = []
    for row in rows:
        if not row.contender.startswith("relay"):
            continue
        others = [o for o in rows if o.scenario == row.scenario and not o.contender.startswith("relay")]
        for other in others:
            if other.contender.startswith("nginx"):
                need = 0.5
            elif other.contender.startswith("one presigned"):
                need = 5.0
            else:
                need = 1.5
            if row.seconds is None:
                found.append(Target(f"{row.scenario}: >= {need}x {other.contender}", False, "relay did not finish"))
            elif other.seconds is None:
                value = (other.limit or 0) / row.seconds
                found.append(Target(f"{row.scenario}: >= {need}x {other.contender}", value >= need,
                                    f"more than {value:.2f}x: the baseline did not finish in its "
                                    f"{other.limit or 0:.0f} s (need >= {need}x)"))
            else:
                value = other.seconds / row.seconds
                found.append(Target(f"{row.scenario}: >= {need}x {other.contender}", value >= need,
                                    f"{value:.2f}x (need >= {need}x)"))
    for clients, kib in sorted(cached_info.get("rss_peak_kib", {}).items()):
        found.append(Target(f"cached, {clients} client(s): edge peak RSS < {args.rss_mib} MiB",
                            kib < args.rss_mib * 1024, f"{kib / 1024:.0f} MiB"))
    relay = [r for r in rows if r.contender.startswith("relay")]
    found.append(Target("100 % completion (relay, every scenario)", all(r.completed for r in relay) and bool(relay),
                        f"{sum(r.completed for r in relay)}/{len(relay)} right"))
    return found


def edge_downloads(args: argparse.Namespace) -> str:
    """The edges' effective [downloads] settings (relay's defaults with --edge-downloads over them)."""
    import dataclasses

    from relay.edge.config import DownloadsSection

    section = dataclasses.replace(DownloadsSection(), **args.edge_downloads)
    keys = ("streams", "chunk_size", "stall_timeout", "request_timeout", "give_up_after", "bandwidth_limit",
            "prefetch_max_size", "cache_size")
    return ", ".join(f"{key} {getattr(section, key)}" for key in keys)


def parameters(args: argparse.Namespace) -> str:
    return (
        f"sizes: cached {args.cached_mib} MiB, uncached {args.uncached_mib} MiB, job result {args.result_mib} MiB; "
        f"clients {','.join(map(str, args.clients))} (curl processes); nginx worker_processes {args.nginx_workers}\n"
        f"China link (S3 and AMQP, one bottleneck): {2 * args.latency_ms:g} ms RTT, {args.rate_kib} KiB/s per "
        f"connection, a reset every {args.reset_mean_s:g} s on average per connection, aggregate "
        f"{args.aggregate_mib} MiB/s shared by all connections; seed {args.seed}\n"
        f"edges' [downloads]: {edge_downloads(args)} (edge B: prefetch_max_size 0); baselines' caps: "
        f"{f'{args.cap:g} s' if args.cap else f'5.5x (single stream), 2x (download_file) relay, at least {args.min_cap:g} s'}"
        f"; single stream's stall timeout {args.stall_s:g} s"
    )


async def main(reactor: Any, args: argparse.Namespace) -> None:
    print(parameters(args), flush=True)
    s3: S3Server = start_moto()
    work = Path(tempfile.mkdtemp(prefix="relay-bench-download-"))
    rows: list[Row] = []
    cached_info: dict[str, Any] = {}
    downloads = dict(args.edge_downloads)
    world = TransferWorld(work / "world", s3, s3_link=LinkProfile(), amqp_link=LinkProfile(), one_bottleneck=True,
                          cloud_toml=jobs_toml(args.result_mib * MiB), downloads=downloads)
    (work / "world").mkdir()
    try:
        await world.start()
        say("staging the files at edge A ...")
        small = world.stage(1000, 1, filename="input.txt")
        big = world.stage(args.cached_mib * MiB, args.seed, filename="cached.bin")
        remote = world.stage(args.uncached_mib * MiB, args.seed + 1, filename="remote.bin")
        world.edge.start()
        await world.wait_done([small[0], big[0], remote[0]], timeout=900)
        await wait_for("edge A cached its uploads", lambda: cached(world.edge_dir, big[0]), 120)
        await wait_for("edge A's replica lists them", lambda: all(
            _listed(world.edge_port, world.api_key, f[0]) for f in (small, big, remote)), 120, 0.3)
        say("in S3 and in edge A's cache")
        if "cached" in args.scenarios:
            cached_info = await scenario_cached(args, world, work, big[0], big[1], args.cached_mib * MiB, rows)
        world.s3_link.set_profile(china(args))
        # The AMQP link shares the S3 link's aggregate cap (one_bottleneck).
        world.amqp_link.set_profile(china(args))
        if "uncached" in args.scenarios:
            await scenario_china(args, world, work, remote[0], remote[1], args.uncached_mib * MiB, rows)
        if "result" in args.scenarios:
            await scenario_result(args, world, small[0], args.result_mib * MiB, rows)
    finally:
        await world.stop()
        s3.stop()
        if args.keep:
            say(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(rows))
    print()
    if cached_info:
        print(f"edge A's RSS after it took the uploads and moved them to S3: "
              f"{cached_info['rss_after_transfer_kib'] / 1024:.0f} MiB; "
              + ("restarted before the cached runs (its cache survives), RSS then "
                 if cached_info["restarted"] else "not restarted, RSS before the cached runs ")
              + f"{cached_info['rss_before_kib'] / 1024:.0f} MiB; peak RSS = VmHWM since the edge started, "
              "including one untimed, hashed download")
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}, {os.cpu_count()} CPUs")
    print()
    checks = targets(rows, cached_info, args)
    print(format_targets(checks))
    if not all(r.completed for r in rows if r.contender.startswith("relay")):
        raise SystemExit(1)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (16, 8, 4 MiB), short caps")
    parser.add_argument("--cached-mib", type=int, default=None, help="the cached file (default 1024)")
    parser.add_argument("--uncached-mib", type=int, default=None, help="the uncached file (default 256)")
    parser.add_argument("--result-mib", type=int, default=None, help="the job's result (default 50)")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8],
                        help="concurrent clients of the cached file, comma-separated (default 1,8)")
    parser.add_argument("--nginx-workers", default="auto", help="nginx's worker_processes (default auto)")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="one way (default 150: 300 ms RTT)")
    parser.add_argument("--rate-kib", type=int, default=512, help="per connection, KiB/s (default 512)")
    parser.add_argument("--aggregate-mib", type=float, default=4.0, help="the whole link, MiB/s (default 4)")
    parser.add_argument("--reset-mean-s", type=float, default=20.0, help="0: no resets (default 20)")
    parser.add_argument("--cap", type=float, default=None,
                        help="seconds each contender may take (default: relative to relay's time)")
    parser.add_argument("--min-cap", type=float, default=None, help="the shortest relative cap (default 120 s)")
    parser.add_argument("--stall-s", type=float, default=30.0, help="the single stream's read timeout")
    parser.add_argument("--rss-mib", type=int, default=200, help="the RSS target")
    parser.add_argument("--edge-downloads", type=json.loads, default={},
                        help='the edges\' [downloads] config as JSON, e.g. \'{"streams": 16}\'')
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=["cached", "uncached", "result"])
    parser.add_argument("--restart", action="store_true",
                        help="restart edge A after the uploads' transfer, before measuring its RSS")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    quick = {"cached_mib": 16, "uncached_mib": 8, "result_mib": 4, "min_cap": 20.0}
    full = {"cached_mib": 1024, "uncached_mib": 256, "result_mib": 50, "min_cap": 120.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


if __name__ == "__main__":
    react(lambda reactor, args: ensureDeferred(main(reactor, args)), (parse(),))
