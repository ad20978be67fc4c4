"""
The whole journey of a person behind the emulated China link, with relay
and without.

    .venv/bin/python bench/china.py                # the full run, both layouts (about 12 min)
    .venv/bin/python bench/china.py --quick        # 6 files, 64 MiB, 10 loads of each page (about 2.5 min)
    .venv/bin/python bench/china.py --layouts relay --total-mib 100 --plots /tmp/plots
    .venv/bin/python bench/china.py --pages-only --layouts relay   # the page loads only, where their time went

Each layout is a world of its own: RabbitMQ (a vhost of the run's), moto's
S3 server, C{relay-cloud} (also the job worker, with the example job kinds
of C{etc/cloud.toml}) and C{relay-edge} as twistd processes, and the link
emulator as the international link (every parameter is printed first and
settable):

- B{relay}: the edge is beside the person; the edge's AMQP link, its
  transfers to the cloud's tus receiver and its downloads from S3 cross
  the emulated link, as one bottleneck (one aggregate cap for all).
- B{before}: the same code placed as people worked before relay, the web
  app next to S3 in the cloud: the person's browser and tools reach the
  edge across the emulated link, and the edge reaches S3 and the broker
  directly.

The person (headless Chromium through Playwright for the pages, the API
through the browser's request context, tus-js-client for the uploads, curl
for the downloads): logs in; opens the project list and the project page
N times each (a full page load each: the page, its scripts and its API
calls, until the page has its data); uploads the files into the project;
once they are in the cloud, submits a C{checksum} job on them and a
C{synth} job on a small Verilog design, follows both to the end, and
downloads both jobs' results and one of the uploaded files, checking every
byte's sha256.  A step the person sees fail is retried (and counted).

Output: a table per step and layout (median and p99 seconds, failures,
retries, MB that crossed the international link) with the ratio of the
before layout's median to relay's, the targets, and PNG plots of the
page-load latencies and of upload progress over time (C{--plots}).
Randomness (file contents and sizes, the emulator's faults) is seeded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor as _reactor  # noqa: E402
from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.threads import blockingCallFromThread  # noqa: E402

from bench._common import Target, format_targets  # noqa: E402
from relay.testing.linkemu import LinkEmulator, LinkProfile  # noqa: E402
from relay.testing.s3servers import S3Server, free_port, start_moto  # noqa: E402
from relay.testing.transfer_world import MiB, Node, Vhost, pattern, read_db, write_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a person's password"
DESIGN = ROOT / "tests" / "cloud" / "jobs" / "counter.v"
reactor: Any = _reactor

#: Where a page load's time went (ms), read in the page once it shows its
#: data: from the navigation's start to the page's own answer, to its first
#: module asked for and its last one read (from the browser's cache), to its
#: scripts run (DOMContentLoaded), to its first and last API answer; and each API
#: call's wait for its answer (request sent to first byte: on loopback, the
#: edge's time), and the longest any call waited to be sent (a connection).
PHASES = """() => {
  const [nav] = performance.getEntriesByType('navigation');
  const api = performance.getEntriesByType('resource').filter((r) => r.name.includes('/api/v1/'));
  const modules = performance.getEntriesByType('resource').filter((r) => r.name.endsWith('.mjs') && !r.name.includes('/vendor/'));
  const phases = { page: nav.responseEnd, 'modules asked': Math.min(...modules.map((r) => r.startTime)),
                   'modules read': Math.max(...modules.map((r) => r.responseEnd)), scripts: nav.domContentLoadedEventStart,
                   'api sent': Math.min(...api.map((r) => r.startTime)),
                   'api answered': Math.max(...api.map((r) => r.responseEnd)),
                   'api queued': Math.max(...api.map((r) => r.requestStart - r.startTime)) };
  for (const r of api) phases[new URL(r.name).pathname.slice(8).replace(/[0-9a-f]{32}/, '<id>')] = r.responseStart - r.requestStart;
  return phases;
}"""


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the emulators run in a reactor of their own, in a thread ---------------


class Emulators:
    """The Twisted reactor, in a thread, for the link emulators."""

    def __init__(self) -> None:
        self._thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
        self._thread.start()

    def start(self, profile: LinkProfile, port: int, seed: int, shares: LinkEmulator | None = None) -> LinkEmulator:
        def make() -> Deferred[LinkEmulator]:
            emulator = LinkEmulator(reactor, "tcp:0:interface=127.0.0.1", f"tcp:127.0.0.1:{port}", profile,
                                    random.Random(seed), shares_link_with=shares)
            return Deferred.fromCoroutine(emulator.start()).addCallback(lambda _: emulator)

        return blockingCallFromThread(reactor, make)  # type: ignore[no-any-return]

    def stop(self, emulator: LinkEmulator) -> None:
        blockingCallFromThread(reactor, lambda: Deferred.fromCoroutine(emulator.stop()))

    def shut_down(self) -> None:
        reactor.callFromThread(reactor.stop)
        self._thread.join(10)


# -- a layout: the deployment, the link, where the person reaches it -------


class Layout:
    def __init__(self, name: str, root: Path, args: argparse.Namespace, emulators: Emulators) -> None:
        self.name = name
        self.root = root
        self.args = args
        self.emulators = emulators
        self.international: list[LinkEmulator] = []
        self.s3: S3Server | None = None
        self.vhost = Vhost()
        self.nodes: list[Node] = []

    def start(self) -> None:
        self.root.mkdir(parents=True)
        self.vhost.create()
        self.s3 = start_moto(log_path=self.root / "moto.log")
        china = link_profile(self.args)
        receiver_port = free_port()
        amqp_url, presign = self.vhost.url(), self.s3.endpoint
        receiver_url = f"http://127.0.0.1:{receiver_port}/transfers/"
        if self.name == "relay":
            # One international link: S3 (downloads), the cloud's tus
            # receiver (the transfer) and the broker share its cap.
            s3_link = self.emulators.start(china, self.s3.port, self.args.seed)
            receiver_link = self.emulators.start(china, receiver_port, self.args.seed + 3, shares=s3_link)
            amqp_link = self.emulators.start(china, 5672, self.args.seed + 1, shares=s3_link)
            self.international = [s3_link, receiver_link, amqp_link]
            amqp_url, presign = self.vhost.url(amqp_link.port), f"http://127.0.0.1:{s3_link.port}"
            receiver_url = f"http://127.0.0.1:{receiver_link.port}/transfers/"
        credentials = self.s3.write_credentials(self.root / "s3-credentials.toml")
        cloud_config = write_config(self.root / "cloud.toml", {
            "cloud": {"listen": f"tcp:{free_port()}:interface=127.0.0.1", "data_dir": str(self.root / "cloud")},
            "link": {"url": self.vhost.url()},
            "s3": {"bucket": self.s3.bucket, "endpoint_url": self.s3.endpoint, "addressing_style": "path",
                   "presign_endpoint_url": presign, "credentials_file": str(credentials)},
        })
        cloud_config.write_text(
            cloud_config.read_text()
            + f'\n[receiver]\nlisten = "tcp:{receiver_port}:interface=127.0.0.1"\npublic_url = "{receiver_url}"\n\n'
            + example_jobs(self.root / "work")
        )
        edge_port = free_port()
        edge_config = write_config(self.root / "edge.toml", {
            "edge": {"id": f"bench-{self.name}", "listen": f"tcp:{edge_port}:interface=127.0.0.1",
                     "data_dir": str(self.root / "edge"), "web_dir": str(self.args.web_dir)},
            "link": {"url": amqp_url},
        })
        env = {k: v for k, v in os.environ.items() if k != "RELAY_CONFIG"}
        subprocess.run([str(BIN / "relay"), "user", "add", "alice", "--password-stdin", "--config",
                        str(cloud_config)], input=PASSWORD.encode(), check=True, capture_output=True,
                       cwd=self.root, env=env)
        made = subprocess.run([str(BIN / "relay"), "key", "create", "alice", "--json", "--config",
                               str(cloud_config)], check=True, capture_output=True, cwd=self.root, env=env)
        self.api_key = str(json.loads(made.stdout)["key"])
        self.nodes = [Node("relay-cloud", cloud_config, self.root / "cloud.log", self.root).start(),
                      Node("relay-edge", edge_config, self.root / "edge.log", self.root).start()]
        self.edge_port = edge_port
        if self.name == "before":
            person_link = self.emulators.start(china, edge_port, self.args.seed + 2)
            self.international = [person_link]
            self.person_url = f"http://127.0.0.1:{person_link.port}"
        else:
            self.person_url = f"http://127.0.0.1:{edge_port}"
        deadline = time.monotonic() + 120
        while not self._edge_knows_alice():
            for node in self.nodes:
                if not node.alive:
                    raise SystemExit(f"bench/china: {node.plugin} exited: {node.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit("bench/china: the edge's replica never learned the user")
            time.sleep(0.3)

    def _edge_knows_alice(self) -> bool:
        try:
            db = self.root / "edge" / "edge.db"
            return bool(read_db(db, "SELECT 1 FROM replica_users WHERE name = 'alice'")) and bool(
                read_db(db, "SELECT 1 FROM replica_api_keys"))
        except Exception:
            return False  # not created yet

    def link_bytes(self) -> int:
        return sum(e.counters.bytes_to_upstream + e.counters.bytes_to_client for e in self.international)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        for emulator in self.international:
            self.emulators.stop(emulator)
        if self.s3 is not None:
            self.s3.stop()
        self.vhost.delete()


def link_profile(args: argparse.Namespace) -> LinkProfile:
    return LinkProfile(
        latency_ms=args.rtt_ms / 2, rate_bytes_per_s=args.rate_kib * 1024,
        aggregate_bytes_per_s=args.aggregate_mib * MiB, reset_mean_s=args.reset_mean_s or None,
        stall_mean_s=args.stall_mean_s or None, stall_duration_s=args.stall_duration_s,
    )


def example_jobs(work_dir: Path) -> str:
    """The [jobs] tables of etc/cloud.toml (the example kinds make run has), working in C{work_dir}."""
    text = (ROOT / "etc" / "cloud.toml").read_text()
    jobs = text[text.index("[jobs]"):]
    return re.sub(r'^work_dir = .*$', f'work_dir = "{work_dir}"', jobs, flags=re.MULTILINE)


# -- what the person does, and what they saw -------------------------------


@dataclass
class Step:
    """One step of the journey in one layout: its times and what went wrong."""

    name: str
    seconds: list[float] = field(default_factory=list)
    failures: int = 0
    retries: int = 0
    link_bytes: int = 0

    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    def p99(self) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


@dataclass
class Journey:
    layout: str
    steps: dict[str, Step] = field(default_factory=dict)
    #: (seconds since the uploads started, MiB the edge has): the person's upload progress.
    progress: list[tuple[float, float]] = field(default_factory=list)
    #: (seconds since the uploads started, MiB in the cloud).
    in_cloud: list[tuple[float, float]] = field(default_factory=list)
    input_bytes: int = 0
    job_run_seconds: float = 0.0

    def step(self, name: str) -> Step:
        return self.steps.setdefault(name, Step(name))


class Person:
    def __init__(self, layout: Layout, args: argparse.Namespace, work: Path, journey: Journey) -> None:
        self.layout = layout
        self.args = args
        self.work = work
        self.journey = journey
        self.url = layout.person_url
        self.auth = {"Authorization": f"Bearer {layout.api_key}"}
        self.phases: list[dict[str, float]] = []

    def measured(self, name: str, action: Callable[[], Any], attempts: int = 5, *, timed: bool = False) -> Any:
        """
        Run C{action} until it succeeds (at most C{attempts} times); its
        time, failures and link bytes.  C{timed}: the action returns the
        seconds it took the person (added to what failed attempts took).
        """
        step = self.journey.step(name)
        before = self.layout.link_bytes()
        started = time.monotonic()
        try:
            for attempt in range(attempts):
                tried = time.monotonic()
                try:
                    result = action()
                    took = time.monotonic() - started
                    step.seconds.append(took - (time.monotonic() - tried) + result if timed else took)
                    return result
                except Exception as e:
                    step.failures += 1
                    step.retries += attempt + 1 < attempts
                    say(f"  {self.layout.name}: {name} failed: {str(e)[:200]}")
            raise SystemExit(f"bench/china: {name} failed {attempts} times in the {self.layout.name} layout")
        finally:
            step.link_bytes += self.layout.link_bytes() - before

    def api(self, request: Any, method: str, path: str, body: Any = None, *, step: Step | None = None) -> Any:
        """
        One API call, as the page makes it: a call that fails on the way
        (the connection reset, no answer) is made again after a second, up
        to 5 times, each counted as a retry of C{step}, or as a failure the
        person sees if it changes something (a POST).
        """
        headers = {**self.auth, **({"Content-Type": "application/json"} if body is not None else {})}
        for attempt in range(5):
            try:
                response = request.fetch(self.url + path, method=method, headers=headers,
                                         data=json.dumps(body) if body is not None else None, timeout=60_000)
            except Exception as e:
                if step is not None:
                    step.retries += 1
                    step.failures += method == "POST"
                say(f"  {self.layout.name}: {method} {path} failed: {str(e).splitlines()[0][:200]}")
                if attempt == 4:
                    raise
                time.sleep(1)
                continue
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {response.text()[:200]}")
            return response.json()

    def go(self) -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                context = browser.new_context()
                page = context.new_page()
                self._journey(context, page)
            finally:
                browser.close()

    def _journey(self, context: Any, page: Any) -> None:
        def log_in() -> None:
            page.goto(self.url + "/", wait_until="load", timeout=60_000)
            answer = context.request.post(self.url + "/api/v1/login", data={"name": "alice", "password": PASSWORD},
                                          timeout=60_000)
            if answer.status != 200:
                raise RuntimeError(f"login: {answer.status}")

        self.measured("log in", log_in)
        projects = self.api(context.request, "GET", "/api/v1/projects", step=self.journey.step("log in"))["projects"]
        project = next(p for p in projects if p["is_default"])["id"]
        # A page is loaded once it shows its data: the project list's rows,
        # a project's members (its owner at least).
        pages = [("open the project list", "/#/projects", "#projects tbody tr"),
                 ("open a project", f"/#/projects/{project}", "#members tbody tr")]
        for name, route, ready in pages:
            for _ in range(self.args.page_loads):
                self.measured(name, lambda route=route, ready=ready: self._load(page, route, ready), timed=True)
            if self.args.pages_only:
                self._say_where_the_time_went(name)
        if self.args.pages_only:
            return
        files = self._files()
        upload_ids = self._upload(files, project)
        stored_at = self._until_in_cloud(context.request, project, upload_ids, files)
        ids = dict(zip([f.name for f in files], upload_ids, strict=True))
        data_ids = [ids[f.name] for f in files if f.name != DESIGN.name]
        jobs = [("checksum", {}, data_ids), ("synth", {"top": "counter"}, [ids[DESIGN.name]])]
        results: list[dict[str, Any]] = []
        runs: list[float] = []
        for kind, parameters, inputs in jobs:
            job, run = self._job(context.request, project, kind, parameters, inputs)
            results += [r for r in job["results"] if not r["name"].endswith(".log")]
            runs.append(run)
        self.journey.job_run_seconds = max(runs)
        ready = self.journey.step("results downloadable, from the upload's start")
        ready.seconds.append(time.monotonic() - self.upload_started)
        say(f"  {self.layout.name}: inputs in the cloud {stored_at:.1f} s after the upload's start, results "
            f"downloadable after {ready.seconds[0]:.1f} s")
        for result in results:
            name = "download a job's result"
            self.measured(name, lambda r=result, n=name: self._download(r["id"], r["sha256"], n))
        chosen = sorted(files, key=lambda f: f.size)[len(files) // 2]
        name = "download an uploaded file"
        self.measured(name, lambda: self._download(ids[chosen.name], chosen.sha256, name))

    def _load(self, page: Any, route: str, ready: str) -> float:
        """
        A full page load (coming from another page): seconds from the
        navigation's start to the first frame in which C{ready} shows, as
        the page's own clock tells (Playwright's round trips to the browser
        are not the person's wait).
        """
        page.goto("about:blank")
        page.goto(self.url + route, wait_until="commit", timeout=60_000)
        shown = page.wait_for_function("(selector) => document.querySelector(selector) ? performance.now() : false",
                                       arg=ready, polling="raf", timeout=60_000)
        seconds = float(shown.json_value()) / 1000
        if self.args.pages_only:
            self.phases.append({**page.evaluate(PHASES), "shown": seconds * 1000})
        return seconds

    def _say_where_the_time_went(self, name: str) -> None:
        """The page loads' phases (medians, ms since the navigation's start), for work on the pages."""
        loads, self.phases = self.phases, []
        if not loads:
            return
        keys = list(dict.fromkeys(key for load in loads for key in load))
        parts = ", ".join(f"{key} {statistics.median(load.get(key, 0.0) for load in loads):.1f}" for key in keys)
        say(f"  {self.layout.name}: {name}, medians in ms from the navigation's start: {parts}")

    @dataclass
    class File:
        path: Path
        name: str
        size: int
        sha256: str

    def _files(self) -> list[Person.File]:
        rng = random.Random(self.args.seed)
        weights = [rng.uniform(self.args.min_mib, self.args.max_mib) for _ in range(self.args.files)]
        scale = self.args.total_mib / sum(weights)
        sizes = [max(int(self.args.min_mib * MiB), min(int(self.args.max_mib * MiB), int(w * scale * MiB)))
                 for w in weights]
        files = []
        for number, size in enumerate(sizes):
            path = self.work / f"data-{number:02d}.bin"
            digest = hashlib.sha256()
            with path.open("wb") as f:
                for block in pattern(self.args.seed * 1000 + number, size):
                    f.write(block)
                    digest.update(block)
            files.append(Person.File(path, path.name, size, digest.hexdigest()))
        design = DESIGN.read_bytes()
        files.append(Person.File(DESIGN, DESIGN.name, len(design), hashlib.sha256(design).hexdigest()))
        self.journey.input_bytes = sum(f.size for f in files)
        return files

    def _upload(self, files: list[Person.File], project: str) -> list[str]:
        """tus-js-client, as the page's Uppy; returns the upload ids (the files' ids), in order."""
        options = self.work / "tus.json"
        options.write_text(json.dumps({
            "endpoint": self.url + "/files/", "key": self.layout.api_key, "project": project,
            "files": [{"path": str(f.path), "name": f.name} for f in files], "limit": self.args.upload_limit,
            "retryDelays": [0, 1000, 3000, 5000, 10000, 20000, 30000],
        }))
        step, per_file = self.journey.step("upload the files (the person's wait)"), self.journey.step(
            "upload one file")
        before = self.layout.link_bytes()
        self.upload_started = time.monotonic()
        process = subprocess.Popen(["node", str(ROOT / "bench" / "js" / "tus_person.mjs"), str(options)],
                                   stdout=subprocess.PIPE, text=True)
        sent: dict[str, int] = {}
        urls: dict[str, str] = {}
        assert process.stdout is not None
        for line in process.stdout:
            event = json.loads(line)
            if event["event"] == "progress":
                sent[event["file"]] = event["sent"]
                self.journey.progress.append((event["t"] / 1000, sum(sent.values()) / MiB))
            elif event["event"] == "retry":
                step.retries += 1
            elif event["event"] == "failed":
                step.failures += 1
            elif event["event"] == "done":
                urls[event["file"]] = event["url"]
                per_file.seconds.append(event["seconds"])
        if process.wait() != 0 or len(urls) != len(files):
            raise SystemExit(f"bench/china: the uploads did not finish in the {self.layout.name} layout")
        step.seconds.append(time.monotonic() - self.upload_started)
        step.link_bytes += self.layout.link_bytes() - before
        return [urls[f.name].rstrip("/").rsplit("/", 1)[1] for f in files]

    def _until_in_cloud(self, request: Any, project: str, ids: list[str], files: list[Person.File]) -> float:
        step = self.journey.step("files in the cloud, from the upload's start")
        before = self.layout.link_bytes()
        sizes = dict(zip(ids, [f.size for f in files], strict=True))
        deadline = time.monotonic() + self.args.timeout
        while True:
            listed = self.api(request, "GET", f"/api/v1/files?project={project}", step=step)["files"]
            stored = {f["id"] for f in listed if f["state"] == "stored"} & set(ids)
            now = time.monotonic() - self.upload_started
            self.journey.in_cloud.append((now, sum(sizes[i] for i in stored) / MiB))
            if len(stored) == len(ids):
                step.seconds.append(now)
                step.link_bytes += self.layout.link_bytes() - before
                return now
            if time.monotonic() > deadline:
                raise SystemExit(f"bench/china: the files never all reached the cloud ({self.layout.name})")
            time.sleep(0.5)

    def _job(self, request: Any, project: str, kind: str, parameters: dict[str, Any],
             inputs: list[str]) -> tuple[dict[str, Any], float]:
        step = self.journey.step(f"{kind} job: submitted to results listed")
        before = self.layout.link_bytes()
        started = time.monotonic()
        submitted = self.api(request, "POST", "/api/v1/jobs",
                             {"project_id": project, "kind": kind, "parameters": parameters, "inputs": inputs},
                             step=step)
        job_id = submitted["job"]["id"]
        deadline = started + self.args.timeout
        while True:
            job = self.api(request, "GET", f"/api/v1/jobs/{job_id}", step=step)["job"]
            if job["state"] in ("failed", "cancelled", "timed_out"):
                raise SystemExit(f"bench/china: the {kind} job {job['state']}: {job.get('error')}")
            if job["state"] == "succeeded" and job["results"] and all(
                    r["state"] == "stored" for r in job["results"]):
                step.seconds.append(time.monotonic() - started)
                step.link_bytes += self.layout.link_bytes() - before
                return job, float(job["finished_at"]) - float(job["started_at"])
            if time.monotonic() > deadline:
                raise SystemExit(f"bench/china: the {kind} job did not finish ({job['state']})")
            time.sleep(0.25)

    def _download(self, file_id: str, sha256: str, step_name: str) -> None:
        """
        curl, as a person's tool, started again after a broken transfer
        and resuming what it has (C{-C -}: curl's own C{--retry} starts a
        download over from its first byte); every byte checked.
        """
        out = self.work / f"download-{file_id}"
        out.unlink(missing_ok=True)
        for _ in range(60):
            done = subprocess.run(
                ["curl", "--no-progress-meter", "--fail", "--max-time", str(self.args.timeout), "-C", "-",
                 "-H", f"Authorization: Bearer {self.layout.api_key}", "-o", str(out),
                 f"{self.url}/api/v1/files/{file_id}/content"],
                capture_output=True, text=True,
            )
            if done.returncode == 0:
                break
            self.journey.step(step_name).retries += 1
            time.sleep(1)
        else:
            raise RuntimeError(f"curl exited {done.returncode}: {done.stderr[-300:]}")
        if hashlib.sha256(out.read_bytes()).hexdigest() != sha256:
            raise RuntimeError(f"the download of {file_id} does not have the file's sha256")


# -- the report ------------------------------------------------------------


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def table(journeys: dict[str, Journey]) -> str:
    names = list(dict.fromkeys(name for j in journeys.values() for name in j.steps))
    header = ["step", "layout", "n", "median", "p99", "failures", "retries", "MB over the link", "before / relay"]
    rows = [header]
    for name in names:
        relay = journeys.get("relay")
        before = journeys.get("before")
        for layout, journey in journeys.items():
            step = journey.steps.get(name)
            if step is None:
                continue
            ratio = "-"
            if layout == "relay" and relay is not None and before is not None and name in before.steps:
                mine, theirs = step.median(), before.steps[name].median()
                if mine and theirs:
                    ratio = f"{theirs / mine:.1f}x"
            rows.append([name, layout, str(len(step.seconds)), _seconds(step.median()), _seconds(step.p99()),
                         str(step.failures), str(step.retries), f"{step.link_bytes / 1e6:.1f}", ratio])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets(journeys: dict[str, Journey], args: argparse.Namespace) -> list[Target]:
    relay, before = journeys.get("relay"), journeys.get("before")
    checks: list[Target] = []
    if relay is None:
        return checks
    pages = [relay.steps[n] for n in ("open the project list", "open a project") if n in relay.steps]
    worst = max((s.p99() or 0.0) for s in pages) if pages else None
    checks.append(Target("relay's page loads: p99 under 100 ms", worst is not None and worst < 0.1,
                         f"{_seconds(worst)}"))
    failures = sum(s.failures for s in relay.steps.values())
    checks.append(Target("relay: no failure the person sees", failures == 0, f"{failures} failures"))
    if before is not None:
        theirs = [before.steps[s.name].p99() or 0.0 for s in pages if s.name in before.steps]
        if worst and theirs:
            ratio = min(theirs) / worst
            checks.append(Target("page loads: p99 at least 20x better than before", ratio >= 20, f"{ratio:.1f}x"))
        name = "upload the files (the person's wait)"
        if name in relay.steps and name in before.steps:
            ratio = (before.steps[name].median() or 0) / (relay.steps[name].median() or 1)
            checks.append(Target("the upload wait at least 10x shorter", ratio >= 10, f"{ratio:.1f}x"))
    ready = relay.steps.get("results downloadable, from the upload's start")
    if ready is not None and ready.seconds:
        allowed = 1.2 * (relay.input_bytes / (args.aggregate_mib * MiB) + relay.job_run_seconds)
        checks.append(Target(
            "results downloadable within 1.2x (inputs at the aggregate cap + the job's run)",
            ready.seconds[0] <= allowed, f"{ready.seconds[0]:.1f} s, allowed {allowed:.1f} s"))
    return checks


def plots(journeys: dict[str, Journey], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    made = []
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for layout, journey in journeys.items():
        for name, style in (("open the project list", "-"), ("open a project", "--")):
            step = journey.steps.get(name)
            if step and step.seconds:
                ordered = sorted(s * 1000 for s in step.seconds)
                fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
                axes.step(ordered, fractions, style, where="post", label=f"{layout}: {name}")
    axes.set_xscale("log")
    axes.set_xlabel("page load (ms, log scale)")
    axes.set_ylabel("fraction of loads")
    axes.set_title("Page loads behind the emulated China link")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    made.append(directory / "china-page-loads.png")
    figure.savefig(made[-1], dpi=110)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 4.5))
    for layout, journey in journeys.items():
        if journey.progress:
            axes.plot(*zip(*journey.progress, strict=True), label=f"{layout}: at the edge (the person's upload)")
        if journey.in_cloud:
            axes.plot(*zip(*journey.in_cloud, strict=True), ":", label=f"{layout}: in the cloud")
    axes.set_xlabel("seconds since the upload started")
    axes.set_ylabel("MiB")
    axes.set_title("Uploading the files behind the emulated China link")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    made.append(directory / "china-uploads.png")
    figure.savefig(made[-1], dpi=110)
    plt.close(figure)
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="6 files of 2-24 MiB (64 MiB), 10 page loads each (about 2.5 min)")
    add("--layouts", default="relay,before")
    add("--seed", type=int, default=1)
    add("--rtt-ms", type=float, default=300.0)
    add("--rate-kib", type=float, default=512.0, help="KiB/s per connection")
    add("--aggregate-mib", type=float, default=4.0, help="MiB/s for all connections together")
    add("--reset-mean-s", type=float, default=20.0, help="mean seconds between resets per connection (0: none)")
    add("--stall-mean-s", type=float, default=120.0, help="mean seconds between silent stalls (0: none)")
    add("--stall-duration-s", type=float, default=10.0)
    add("--files", type=int, default=10)
    add("--min-mib", type=float, default=5.0)
    add("--max-mib", type=float, default=100.0)
    add("--total-mib", type=float, default=400.0)
    add("--page-loads", type=int, default=20)
    add("--pages-only", action="store_true",
        help="log in and load the pages, nothing else, saying where each page load's time went (work on the pages)")
    add("--web-dir", type=Path, default=ROOT / "web",
        help="the edge's front end (another version of web/, to compare the pages)")
    add("--upload-limit", type=int, default=5, help="files uploading at once (Uppy's default)")
    add("--timeout", type=float, default=900.0, help="seconds a step may take before the run fails")
    add("--plots", type=Path, default=None, help="where to write the PNG plots (default: none)")
    add("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    if args.quick:
        args.files, args.min_mib, args.max_mib, args.total_mib, args.page_loads = 6, 2.0, 24.0, 64.0, 10
    layouts = args.layouts.split(",")
    print(f"layouts: {', '.join(layouts)}; {args.files} files of {args.min_mib:g}-{args.max_mib:g} MiB "
          f"({args.total_mib:g} MiB) and a Verilog design, {args.page_loads} loads of each page, "
          f"{args.upload_limit} uploads at once; seed {args.seed}")
    print(f"link: {args.rtt_ms:g} ms RTT, {args.rate_kib:g} KiB/s per connection, aggregate "
          f"{args.aggregate_mib:g} MiB/s, a reset every {args.reset_mean_s:g} s and a silent stall of "
          f"{args.stall_duration_s:g} s every {args.stall_mean_s:g} s on average per connection (0: none)",
          flush=True)
    emulators = Emulators()
    journeys: dict[str, Journey] = {}
    try:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="relay-bench-china-") as d:
            for name in layouts:
                say(f"{name}: starting")
                layout = Layout(name, Path(d) / name, args, emulators)
                try:
                    layout.start()
                    work = Path(d) / f"{name}-person"
                    work.mkdir()
                    journeys[name] = Journey(name)
                    say(f"{name}: the person starts")
                    Person(layout, args, work, journeys[name]).go()
                finally:
                    layout.stop()
    finally:
        emulators.shut_down()
    print()
    print(table(journeys))
    print()
    checks = targets(journeys, args)
    print(format_targets(checks))
    if args.plots is not None:
        for path in plots(journeys, args.plots):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
