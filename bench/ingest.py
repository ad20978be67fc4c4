"""
Ingest benchmark: how fast the edge's tus receiver takes uploads on
loopback, and how much memory it needs, beside two baselines in the same
run:

- a minimal raw socket sink (threads, recv_into, write, fsync at the end),
  writing the same bytes to the same disk: the ceiling;
- tuspyserver (FastAPI + uvicorn), the Python tus server a user would
  otherwise pick.

Scenarios: one 1 GiB upload, and 8 concurrent 256 MiB uploads, each sent
as one PATCH (as Uppy does). Every server runs as its own process, fresh
for each run; its peak RSS is the kernel's high-water mark (VmHWM). Each
run starts after os.sync() (no dirty pages from the run before), and each
figure is the median of --repeat runs (default 3).
Targets (issue 5): edge >= 50 % of the raw sink, faster than tuspyserver,
edge peak RSS < 200 MiB.

    .venv/bin/python bench/ingest.py [--big-mib 1024] [--small-mib 256] [--streams 8]

tuspyserver is optional (pip install tuspyserver uvicorn); without it its
rows say so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._common import http_request  # noqa: E402

BIN = Path(sys.executable).parent
KEY = "bench-key"
BUFFER = os.urandom(8 << 20)

EDGE_TAC = f"""
import os
from twisted.application.service import Application
from twisted.internet import reactor
from relay.config import load
from relay.edge.config import EdgeConfig
from relay.edge.tap import edge_service
from relay.testing.auth import FakeAuthenticator, FakeProjectAccess
from relay.testing.transfer import FakeUploadSink
auth = FakeAuthenticator()
auth.add_user("bench", key={KEY!r})
config = load(EdgeConfig, os.environ["RELAY_CONFIG"])
application = Application("relay-edge-bench")
# Ingest only: completed uploads stay staged (the transfer stage is not measured).
edge_service(config, reactor, authenticator=auth, projects=FakeProjectAccess(),
             upload_sink=FakeUploadSink()).setServiceParent(application)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Servers.


def serve_raw(port: int, directory: Path) -> None:
    """The baseline sink: read an HTTP request's body, write it, fsync, 204."""
    listener = socket.create_server(("127.0.0.1", port), backlog=64)
    counter = iter(range(1 << 30))

    def handle(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                more = conn.recv(65536)
                if not more:
                    return
                head += more
            head, _, rest = head.partition(b"\r\n\r\n")
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            fd = os.open(directory / f"sink-{next(counter)}", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.write(fd, rest)
                remaining = length - len(rest)
                buf = bytearray(1 << 20)
                view = memoryview(buf)
                while remaining > 0:
                    n = conn.recv_into(view, min(len(buf), remaining))
                    if not n:
                        return
                    os.write(fd, view[:n])
                    remaining -= n
                os.fsync(fd)
            finally:
                os.close(fd)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nUpload-Offset: %d\r\n\r\n" % length)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def serve_tuspyserver(port: int, directory: Path) -> None:
    import uvicorn
    from fastapi import FastAPI
    from tuspyserver import create_tus_router

    app = FastAPI()
    app.include_router(create_tus_router(prefix="files", files_dir=str(directory)))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    path: str  # where uploads are created (tus) or sent (raw)
    tus: bool

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_edge(work: Path) -> Server:
    port = free_port()
    (work / "edge.tac").write_text(EDGE_TAC)
    config = work / "edge.toml"
    config.write_text(
        f'[edge]\nlisten = "tcp:{port}:interface=127.0.0.1"\ndata_dir = "{work / "edge"}"\n'
        '[link]\nurl = "amqp://guest:guest@127.0.0.1:9/%2F"\n'
        "[uploads]\ndisk_reserve = 0\n"
    )
    env = {**os.environ, "RELAY_CONFIG": str(config)}
    process = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", f"--logfile={work / 'edge.log'}", "-y",
         str(work / "edge.tac")], env=env, cwd=work,
    )
    return Server("relay edge", process, port, "/files/", True)


def start_self(kind: str, work: Path, name: str, path: str, tus: bool) -> Server:
    port = free_port()
    (work / kind).mkdir()
    process = subprocess.Popen([sys.executable, __file__, f"--serve-{kind}", str(port),
                                str(work / kind)])
    return Server(name, process, port, path, tus)


def wait_up(server: Server) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited with {server.process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                pass
            if server.tus:
                status, _ = request(server.port, "OPTIONS", server.path, {}, 0)
                if status >= 500:  # the edge is still recovering
                    raise OSError
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{server.name} did not start")


# Client.


def request(port: int, method: str, path: str, headers: dict[str, str], length: int
            ) -> tuple[int, dict[str, str]]:
    """One request whose body is C{length} bytes from BUFFER; returns status and headers."""

    def send(s: socket.socket) -> None:
        view = memoryview(BUFFER)
        sent = 0
        while sent < length:
            n = min(len(BUFFER), length - sent)
            s.sendall(view[:n])
            sent += n

    return http_request(port, method, path, headers, length, send)


def upload(server: Server, size: int) -> None:
    tus = {"Tus-Resumable": "1.0.0", "Authorization": f"Bearer {KEY}"}
    if not server.tus:
        status, _ = request(server.port, "PATCH", server.path, {}, size)
        assert status == 204, status
        return
    status, headers = request(server.port, "POST", server.path,
                              {**tus, "Upload-Length": str(size),
                               "Upload-Metadata": "filename YmVuY2guYmlu"}, 0)
    assert status == 201, (server.name, status, headers)
    location = urllib.parse.urlsplit(headers["location"]).path
    status, headers = request(server.port, "PATCH", location, {
        **tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}, size)
    assert status == 204 and int(headers["upload-offset"]) == size, (server.name, status, headers)


@dataclass
class Result:
    scenario: str
    server: str
    mb_per_s: float | None
    peak_rss_mib: float | None
    note: str = ""


def summarise(runs: list[Result]) -> Result:
    """The median throughput of a server's runs, and the highest peak RSS."""
    failed = [r for r in runs if r.mb_per_s is None]
    if failed:
        return failed[0]
    speeds = sorted(r.mb_per_s or 0.0 for r in runs)
    rss = max(r.peak_rss_mib or 0.0 for r in runs)
    note = f"runs: {', '.join(f'{s:.0f}' for s in speeds)}" if len(runs) > 1 else ""
    return Result(runs[0].scenario, runs[0].server, speeds[len(speeds) // 2], rss, note)


def run(scenario: str, start: Callable[[Path], Server], sizes: list[int], base: Path) -> Result:
    # Start every run with no dirty pages left over from the one before.
    os.sync()
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=base))
    server = start(work)
    try:
        wait_up(server)
        errors: list[BaseException] = []

        def one(size: int) -> None:
            try:
                upload(server, size)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(size,)) for size in sizes]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        if errors:
            return Result(scenario, server.name, None, None, f"failed: {errors[0]!r}")
        rss = server.peak_rss_mib()
        return Result(scenario, server.name, sum(sizes) / elapsed / 1e6, rss)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(results: list[Result]) -> str:
    lines = [f"{'scenario':<16} {'server':<13} {'MB/s':>8} {'vs raw':>7} {'peak RSS MiB':>13}  note"]
    raw = {r.scenario: r.mb_per_s for r in results if r.server == "raw sink"}
    for r in results:
        base = raw.get(r.scenario)
        ratio = f"{r.mb_per_s / base:.2f}" if r.mb_per_s and base else "-"
        speed = f"{r.mb_per_s:.0f}" if r.mb_per_s else "-"
        rss = f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib else "-"
        lines.append(f"{r.scenario:<16} {r.server:<13} {speed:>8} {ratio:>7} {rss:>13}  {r.note}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small-mib", type=int, default=256)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--dir", default=str(ROOT / "var" / "bench"),
                        help="where servers write (the disk under test)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--only", action="append", help="run only this server (repeatable)")
    parser.add_argument("--serve-raw", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve-tuspyserver", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        serve_raw(int(args.serve_raw[0]), Path(args.serve_raw[1]))
        return
    if args.serve_tuspyserver:
        serve_tuspyserver(int(args.serve_tuspyserver[0]), Path(args.serve_tuspyserver[1]))
        return

    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    try:
        import tuspyserver  # noqa: F401
        import uvicorn  # noqa: F401

        have_tuspyserver = True
    except ImportError:
        have_tuspyserver = False
    servers: list[tuple[str, Callable[[Path], Server] | None]] = [
        ("raw sink", lambda w: start_self("raw", w, "raw sink", "/sink", False)),
        ("relay edge", start_edge),
        ("tuspyserver", (lambda w: start_self("tuspyserver", w, "tuspyserver", "/files", True))
         if have_tuspyserver else None),
    ]
    scenarios = [
        (f"1 x {args.big_mib} MiB", [args.big_mib << 20]),
        (f"{args.streams} x {args.small_mib} MiB", [args.small_mib << 20] * args.streams),
    ]
    results = []
    for scenario, sizes in scenarios:
        # Servers take turns, so that a disk that is busier at one moment
        # than at another (other work on the machine) weighs on all alike.
        runs: dict[str, list[Result]] = {name: [] for name, _ in servers}
        for repeat in range(args.repeat):
            for name, start in servers:
                if (args.only and name not in args.only) or start is None:
                    continue
                print(f"== {scenario}: {name} (run {repeat + 1})", file=sys.stderr, flush=True)
                runs[name].append(run(scenario, start, sizes, base))
        for name, start in servers:
            if args.only and name not in args.only:
                continue
            if start is None:
                results.append(Result(scenario, name, None, None, "not installed"))
            else:
                results.append(summarise(runs[name]))
    print(table(results))
    edge = [r for r in results if r.server == "relay edge"]
    ok = all(r.mb_per_s and r.peak_rss_mib and r.peak_rss_mib < 200 for r in edge)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
