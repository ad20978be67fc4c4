"""
bench/transfer: how long a file takes to get into S3 over an emulated
China link, through relay and the ways a user would otherwise try.

The link (relay.testing.linkemu, in this process): 150 ms one way (300 ms
RTT), about 512 KiB/s per connection, each connection reset on average
every 20 s, a generous aggregate cap.  The S3 side is moto's server mode
(or ``--s3 rclone``) on loopback.  In the same run:

  - the user's tus upload to the edge (loopback: the edge is near them),
  - relay: the edge moves the staged file to S3 (parallel parts over
    presigned URLs; the AMQP link to the cloud crosses the same emulated
    link), until the cloud has completed, verified and registered it,
  - boto3 ``put_object``: one stream, botocore's retries, started over
    until the cap,
  - boto3 ``upload_file`` with its default TransferConfig (8 MiB parts, 10
    threads), started over until the cap.

Targets (issue 6): relay at least 8x faster than the single stream and
1.5x faster than upload_file, and 100 % completion.  Each baseline runs
until it succeeds or until it has taken clearly longer than the target
allows (by default 8.5x relay's time for put_object, 2x for upload_file;
``--cap`` fixes one limit for all); one that does not finish is reported
as such, and relay's speed-up over it is then at least its cap / relay's
time.

    python bench/transfer.py              # 256 MiB, several minutes
    python bench/transfer.py --size 64    # a quick run
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import http_request  # noqa: E402
from relay.testing.linkemu import LinkEmulator, LinkProfile  # noqa: E402
from relay.testing.s3servers import S3Server, free_port, start_moto, start_rclone  # noqa: E402
from relay.testing.transfer_world import (  # noqa: E402
    AMQP_PORT,
    BIN,
    MiB,
    Vhost,
    cloud_node,
    job_view,
    pattern,
    seed_cloud,
    upload_view,
    write_config,
)

KEY = "bench-key"
# Registry ids are 32 hex digits.
USER = "be" * 16
PROJECT = "ca" * 16

EDGE_TAC = f"""
import os
from twisted.application.service import Application
from twisted.internet import reactor
from relay.config import load
from relay.edge.config import EdgeConfig
from relay.edge.tap import edge_service
from relay.testing.auth import FakeAuthenticator, FakeProjectAccess
auth = FakeAuthenticator()
auth.add_user({USER!r}, key={KEY!r})
projects = FakeProjectAccess()
projects.grant({USER!r}, {PROJECT!r})
config = load(EdgeConfig, os.environ["RELAY_CONFIG"])
application = Application("relay-edge-bench")
edge_service(config, reactor, authenticator=auth, projects=projects).setServiceParent(application)
"""


@dataclass
class Row:
    contender: str
    measured: str
    seconds: float | None
    completed: bool
    notes: str = ""
    #: How long it was allowed.
    limit: float | None = None
    #: Bytes that crossed the emulated link towards the cloud / file size.
    sent_ratio: float | None = None


def china(args: argparse.Namespace) -> LinkProfile:
    return LinkProfile(
        latency_ms=args.latency_ms,
        rate_bytes_per_s=args.rate_kib * 1024,
        aggregate_bytes_per_s=args.aggregate_mib * MiB,
        reset_mean_s=args.reset_mean_s or None,
    )


def cell(args: argparse.Namespace, aggregate_mib: float, reset_mean_s: float) -> argparse.Namespace:
    """The arguments of one grid cell."""
    return argparse.Namespace(**{**vars(args), "aggregate_mib": aggregate_mib, "reset_mean_s": reset_mean_s})


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await deferLater(reactor, seconds, lambda: None)


# The user's tus upload to the edge (loopback).


def tus_upload(port: int, source: Path, size: int) -> str:
    """POST then one PATCH with the whole file (as Uppy does); returns the upload id."""

    def request(method: str, path: str, headers: dict[str, str], body: Path | None) -> tuple[int, dict[str, str]]:
        def send(s: socket.socket) -> None:
            assert body is not None
            with body.open("rb") as f:
                s.sendfile(f)

        tus = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {KEY}"}
        return http_request(port, method, path, {**tus, **headers}, size if body is not None else 0,
                            send if body is not None else None)

    metadata = f"filename YmVuY2guYmlu,project {base64.b64encode(PROJECT.encode()).decode()}"
    status, headers = request("POST", "/files/", {"Upload-Length": str(size), "Upload-Metadata": metadata},
                              None)
    assert status == 201, (status, headers)
    location = urllib.parse.urlsplit(headers["location"]).path
    status, headers = request("PATCH", location, {"Upload-Offset": "0",
                                                  "Content-Type": "application/offset+octet-stream"}, source)
    assert status == 204 and int(headers["upload-offset"]) == size, (status, headers)
    return location.rstrip("/").rsplit("/", 1)[-1]


def wait_port(port: int, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the edge exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the edge did not start")


# The contenders.


async def run_relay(args: argparse.Namespace, work: Path, s3: S3Server, source: Path, size: int,
                    sha256: str, rows: list[Row], mode: str = "tus") -> None:
    """
    relay's transfer: C{mode} "tus" (the edge's link leads to the cloud's
    receiver) or "direct" (it leads to S3, through presigned URLs).
    """
    from twisted.internet import reactor

    work.mkdir(parents=True, exist_ok=True)
    vhost = Vhost()
    await deferToThread(vhost.create)
    receiver_port = free_port()
    upstream = receiver_port if mode == "tus" else s3.port
    s3_link = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{upstream}", china(args),
                           random.Random(args.seed))
    amqp_link = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{AMQP_PORT}", china(args),
                             random.Random(args.seed + 1))
    await s3_link.start()
    await amqp_link.start()
    seed_cloud(work / "cloud", "bench", user_id=USER, project_id=PROJECT)
    credentials = s3.write_credentials(work / "s3.toml")
    cloud = cloud_node(work, amqp_url=vhost.url(), listen_port=free_port(), s3={
        "bucket": s3.bucket, "endpoint_url": s3.endpoint, "addressing_style": "path",
        "presign_endpoint_url": f"http://127.0.0.1:{s3_link.port}", "credentials_file": str(credentials),
    }, more_toml=f'[receiver]\nlisten = "tcp:{receiver_port}:interface=127.0.0.1"\n'
                 f'public_url = "http://127.0.0.1:{s3_link.port}/transfers/"\n')
    cloud.start()
    port = free_port()
    (work / "edge.tac").write_text(EDGE_TAC)
    config = write_config(work / "edge.toml", {
        "edge": {"id": "bench", "listen": f"tcp:{port}:interface=127.0.0.1", "data_dir": str(work / "edge")},
        "link": {"url": vhost.url(amqp_link.port), "heartbeat": 5},
        "uploads": {"disk_reserve": 0},
        "transfer": {"concurrency": args.concurrency, "mode": mode, "max_streams": args.max_streams,
                     "start_streams": args.start_streams},
    })
    log = (work / "edge.log").open("ab")
    edge = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "-y", str(work / "edge.tac")],
        env={**os.environ, "RELAY_CONFIG": str(config)}, cwd=work, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        await deferToThread(wait_port, port, edge)
        await sleep(2)  # the uploads service recovers before it accepts uploads
        started = time.monotonic()
        upload_id = await deferToThread(tus_upload, port, source, size)
        staged = time.monotonic()
        assert cloud.process is not None
        cpu_before = (cpu_seconds(edge.pid), cpu_seconds(cloud.process.pid), cpu_seconds(s3.process.pid),
                      own_cpu_seconds(), os.getloadavg()[0])
        if not args.grid:
            rows.append(Row("the user's tus upload to the edge", "upload complete (loopback)", staged - started,
                            True, "what the user waits for"))
        print(f"  tus upload done in {staged - started:.1f} s; relay transfer running ...", flush=True)
        deadline = staged + (args.cap or 900.0)
        done = False
        while time.monotonic() < deadline:
            job = job_view(work / "edge", upload_id)
            if job is not None and job.state in ("done", "failed"):
                done = job.state == "done"
                break
            await sleep(0.2)
        seconds = time.monotonic() - staged
        cpu = [after - before for after, before in zip(
            (cpu_seconds(edge.pid), cpu_seconds(cloud.process.pid), cpu_seconds(s3.process.pid),
             own_cpu_seconds()), cpu_before, strict=False)]
        print(f"  CPU seconds over {seconds:.1f} s: edge {cpu[0]:.1f}, cloud (receiver) {cpu[1]:.1f}, "
              f"S3 server {cpu[2]:.1f}, bench (link emulator) {cpu[3]:.1f}; load average "
              f"{cpu_before[4]:.1f} before, {os.getloadavg()[0]:.1f} after", flush=True)
        job = job_view(work / "edge", upload_id)
        ok = done and await deferToThread(_object_sha256, s3, f"projects/{PROJECT}/files/{upload_id}") == sha256
        state = upload_view(work / "edge", upload_id)[0]
        label = ("relay tus (streams to the cloud's receiver)" if mode == "tus"
                 else f"relay direct ({args.concurrency} part PUTs at once)")
        rows.append(Row(
            label, "staged -> in S3, verified, registered",
            seconds if ok else None, ok,
            f"{s3_link.counters.resets_injected} resets, {getattr(job, 'restarts', '?')} restarts, "
            f"{s3_link.counters.bytes_to_upstream / size:.2f}x bytes sent, upload {state}",
            args.cap or 900.0, s3_link.counters.bytes_to_upstream / size,
        ))
    finally:
        edge.terminate()
        await deferToThread(edge.wait)
        log.close()
        await deferToThread(cloud.stop)
        await s3_link.stop()
        await amqp_link.stop()
        await deferToThread(vhost.delete)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This process's CPU time (the link emulator, mostly, while relay runs)."""
    times = os.times()
    return times.user + times.system


def _object_sha256(s3: S3Server, key: str) -> str:
    body = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(MiB), b""):
        digest.update(chunk)
    return digest.hexdigest()


async def run_boto3(args: argparse.Namespace, s3: S3Server, source: Path, size: int, sha256: str,
                    how: str, rows: list[Row], limit: float) -> None:
    """
    One baseline through its own emulated link (same profile), started over
    after each failure until it succeeds or the cap passes.
    """
    from twisted.internet import reactor

    link = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{s3.port}", china(args),
                        random.Random(args.seed + 2))
    await link.start()
    # boto3's defaults, but its checksums off as for relay (the S3 servers
    # here reject aws-chunked bodies) and the classic transfer path.
    client = s3.client(f"http://127.0.0.1:{link.port}")
    key = f"baseline/{how}"
    attempts = 0
    stop = {"now": False}
    started = time.monotonic()

    def attempt() -> None:
        if how == "put_object":
            with source.open("rb") as f:
                client.put_object(Bucket=s3.bucket, Key=key, Body=f)
        else:
            client.upload_file(str(source), s3.bucket, key)

    async def cap() -> None:
        await sleep(limit)
        stop["now"] = True
        # Make the attempt in progress fail fast.
        await link.close_listener()
        link.reset_all()

    capper = Deferred.fromCoroutine(cap())
    ok, error = False, ""
    while not stop["now"]:
        attempts += 1
        try:
            await deferToThread(attempt)
            ok = True
            break
        except Exception as e:
            error = f"{type(e).__name__}: {str(e)[:80]}"
            print(f"  {how} attempt {attempts} failed after {time.monotonic() - started:.0f} s: {error}",
                  flush=True)
    seconds = time.monotonic() - started
    capper.cancel()
    capper.addErrback(lambda f: None)
    if ok:
        ok = await deferToThread(_object_sha256, s3, key) == sha256
    label = {"put_object": "boto3 put_object (single stream)",
             "upload_file": "boto3 upload_file (default TransferConfig)"}[how]
    notes = f"{attempts} attempt(s), {link.counters.resets_injected} resets"
    if not ok:
        notes += f"; did not finish in {limit:.0f} s; last: {error[:60]}"
    rows.append(Row(label, "in S3", seconds if ok else None, ok, notes, limit, link.counters.bytes_to_upstream / size))
    await link.stop()


def table(rows: list[Row], size: int, args: argparse.Namespace) -> str:
    relay = next((r for r in rows if r.contender.startswith("relay tus")), None)
    lines = [
        f"bench/transfer: {size // MiB} MiB, link {args.latency_ms * 2:.0f} ms RTT, "
        f"{args.rate_kib} KiB/s per connection, reset every {args.reset_mean_s:.0f} s on average, "
        f"aggregate {args.aggregate_mib} MiB/s; S3 = {args.s3}",
        "",
        f"{'contender':44} {'time (s)':>9} {'MiB/s':>7} {'done':>5} {'relay is':>10}  notes",
    ]
    for row in rows:
        seconds = f"{row.seconds:.1f}" if row.seconds is not None else f">{row.limit or 0:.0f}"
        rate = f"{size / MiB / row.seconds:.2f}" if row.seconds else "-"
        speedup = "-"
        if relay is not None and relay.seconds and row is not relay and not row.contender.startswith("the user"):
            if row.seconds:
                speedup = f"{row.seconds / relay.seconds:.1f}x"
            else:
                speedup = f">{(row.limit or 0) / relay.seconds:.1f}x"
        lines.append(f"{row.contender:44} {seconds:>9} {rate:>7} {'yes' if row.completed else 'NO':>5} "
                     f"{speedup:>10}  {row.notes}")
    ideal = size / (args.rate_kib * 1024)
    lines.append("")
    lines.append(f"one stream at the full {args.rate_kib} KiB/s with no reset at all would take "
                 f"{ideal:.0f} s" + (f" (relay is {ideal / relay.seconds:.1f}x faster than even that)"
                                     if relay is not None and relay.seconds else ""))
    return "\n".join(lines)


def grid_table(cells: list[tuple[float, float, list[Row]]], size: int, args: argparse.Namespace) -> str:
    """One line per cell and contender: fraction of the aggregate cap, bytes sent / size, completion."""
    lines = [
        f"bench/transfer grid: {size // MiB} MiB, {args.latency_ms * 2:.0f} ms RTT, {args.rate_kib} KiB/s per "
        f"connection; S3 = {args.s3}",
        "",
        f"{'cap MiB/s':>9} {'resets':>7}  {'contender':44} {'time (s)':>9} {'of cap':>7} {'bytes':>6} {'done':>5}",
    ]
    for aggregate, reset, rows in cells:
        for row in rows:
            seconds = f"{row.seconds:.1f}" if row.seconds is not None else f">{row.limit or 0:.0f}"
            fraction = f"{size / row.seconds / (aggregate * MiB):.2f}" if row.seconds else "-"
            sent = f"{row.sent_ratio:.2f}x" if row.sent_ratio is not None else "-"
            resets = f"{reset:.0f} s" if reset else "none"
            lines.append(f"{aggregate:>9.0f} {resets:>7}  {row.contender:44} {seconds:>9} {fraction:>7} {sent:>6} "
                         f"{'yes' if row.completed else 'NO':>5}")
        lines.append("")
    return "\n".join(lines)


async def main_grid(args: argparse.Namespace) -> None:
    size = args.size * MiB
    work = Path(tempfile.mkdtemp(prefix="relay-bench-transfer-"))
    s3 = start_moto() if args.s3 == "moto" else start_rclone(work / "objects")
    cells: list[tuple[float, float, list[Row]]] = []
    run = 0
    try:
        source = work / "source.bin"
        digest = hashlib.sha256()
        with source.open("wb") as f:
            for block in pattern(args.seed, size):
                digest.update(block)
                f.write(block)
        sha256 = digest.hexdigest()
        for aggregate in args.caps:
            for reset in args.resets:
                here = cell(args, aggregate, reset)
                rows: list[Row] = []
                for mode in ("tus", "direct"):
                    if mode in args.skip:
                        continue
                    run += 1
                    print(f"cap {aggregate} MiB/s, resets {reset or 'none'}: relay {mode} ...", flush=True)
                    await run_relay(here, work / f"run-{run}", s3, source, size, sha256, rows, mode)
                    print(f"  {rows[-1].seconds} s, {rows[-1].sent_ratio:.2f}x", flush=True)
                fastest = min((r.seconds for r in rows if r.seconds), default=None)
                for how in ("upload_file", "put_object"):
                    if how in args.skip:
                        continue
                    # A baseline may take what the slowest relay path could
                    # not beat by far; past that it reads as "did not finish".
                    limit = args.cap or max(60.0, args.baseline_factor * (fastest or 300.0))
                    print(f"  boto3 {how} (at most {limit:.0f} s) ...", flush=True)
                    await run_boto3(here, s3, source, size, sha256, how, rows, limit)
                cells.append((aggregate, reset, rows))
                print(grid_table(cells[-1:], size, args), flush=True)
    finally:
        s3.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"(kept {work})")
    print()
    print(grid_table(cells, size, args))


async def main(reactor: Any, args: argparse.Namespace) -> None:
    if args.grid:
        await main_grid(args)
        return
    size = args.size * MiB
    work = Path(tempfile.mkdtemp(prefix="relay-bench-transfer-"))
    s3 = start_moto() if args.s3 == "moto" else start_rclone(work / "objects")
    rows: list[Row] = []
    try:
        source = work / "source.bin"
        digest = hashlib.sha256()
        with source.open("wb") as f:
            for block in pattern(args.seed, size):
                digest.update(block)
                f.write(block)
        sha256 = digest.hexdigest()
        print(f"relay ({size // MiB} MiB) ...", flush=True)
        await run_relay(args, work / "tus", s3, source, size, sha256, rows, "tus")
        if "direct" not in args.skip:
            await run_relay(args, work / "direct", s3, source, size, sha256, rows, "direct")
        relay = next((r.seconds for r in rows if r.contender.startswith("relay tus")), None)
        for how, factor in (("put_object", 8.5), ("upload_file", 2.0)):
            if how in args.skip:
                continue
            limit = args.cap or (max(120.0, factor * relay) if relay else 900.0)
            print(f"boto3 {how} (at most {limit:.0f} s) ...", flush=True)
            await run_boto3(args, s3, source, size, sha256, how, rows, limit)
    finally:
        s3.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"(kept {work})")
    print()
    print(table(rows, size, args))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="MiB (default 256)")
    parser.add_argument("--s3", choices=("moto", "rclone"), default="moto")
    parser.add_argument("--latency-ms", type=float, default=150.0, help="one way")
    parser.add_argument("--rate-kib", type=int, default=512, help="per connection, KiB/s")
    parser.add_argument("--aggregate-mib", type=int, default=100, help="whole link, MiB/s")
    parser.add_argument("--reset-mean-s", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16, help="relay's parts at once")
    parser.add_argument("--cap", type=float, default=None,
                        help="seconds each contender may take (default: relative to relay's time)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("put_object", "upload_file", "direct", "tus"))
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--single", dest="grid", action="store_false",
                        help="one link (--aggregate-mib, --reset-mean-s) instead of the grid")
    parser.add_argument("--caps", type=lambda v: [float(x) for x in v.split(",")], default=[2.0, 4.0, 16.0],
                        help="the grid's aggregate caps, MiB/s (default 2,4,16)")
    parser.add_argument("--resets", type=lambda v: [float(x) for x in v.split(",")], default=[0.0, 20.0, 5.0],
                        help="the grid's mean seconds between resets per connection, 0 = none (default 0,20,5)")
    parser.add_argument("--max-streams", type=int, default=64, help="the tus path's most streams")
    parser.add_argument("--start-streams", type=int, default=64, help="the tus path's first stream count")
    parser.add_argument("--baseline-factor", type=float, default=3.0,
                        help="boto3 baselines may take this many times the faster relay path (grid)")
    parser.add_argument("--quick", action="store_true", help="a small grid run: 32 MiB unless --size says")
    args = parser.parse_args(argv)
    if args.quick and args.size == 256:
        args.size = 32
    return args


if __name__ == "__main__":
    react(main, (parse(),))
