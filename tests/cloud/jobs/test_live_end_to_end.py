"""
Jobs watched live at the edge, with the real parts (RabbitMQ, moto, both
twistd processes): a job's log followed on C{/api/events} and the log
endpoint has every line once, in order, across an outage of the edge's
broker connection in the middle of it; a job printing 1 GiB costs the
worker little memory, its stored log is capped and the edge's tail is
bounded; C{timed_out} is an outcome of its own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.http_headers import Headers

from relay.cloud.jobs.output import cut_marker
from relay.testing.linkemu import LinkProfile
from relay.testing.live_jobs import EventStream, LogFollower
from relay.testing.transfer_world import rabbitmqctl, read_db
from tests.cloud.jobs.test_end_to_end import JOBS_TOML, JobWorld
from tests.edge.transfer.world import TransferWorld, sleep

LINES = 300


def chatty(name: str, lines: int) -> str:
    """
    A kind printing C{lines} lines, one every 30 ms, with progress every 50.
    """
    script = (
        f'i=1; while [ $i -le {lines} ]; do echo "line $i of the log"; '
        f"if [ $((i % 50)) -eq 0 ]; then printf '::progress %d.%02d at %d\\n' $((i / {lines})) "
        f"$((i * 100 / {lines} % 100)) $i; fi; i=$((i + 1)); sleep 0.03; done"
    )
    return f"\n[jobs.kinds.{name}]\ncommand = {json.dumps(['sh', '-c', script])}\nresults = []\n"


#: About 9 s of log.
CHATTY = chatty("chatty", LINES)
#: About 27 s of log: a 30 s outage a third of the way in outlasts it.
LONG_LINES = 900
LONG = chatty("long", LONG_LINES)
FLOOD_LOG_LIMIT = 1 << 20
#: 1 GiB of 1 KiB lines, as fast as the pipe takes them.
FLOOD_SCRIPT = 'yes "$(printf %01023d 0)" | head -c 1073741824; echo done'
FLOOD = (
    "\n[jobs.kinds.flood]\n"
    f"command = {json.dumps(['sh', '-c', FLOOD_SCRIPT])}\n"
    "results = []\ntimeout = 600.0\n"
    f"limits = {{ log_bytes = {FLOOD_LOG_LIMIT} }}\n"
)
SLEEPER = '\n[jobs.kinds.sleeper]\ncommand = ["sleep", "60"]\nresults = []\ntimeout = 2.0\n'


class LiveJobs(JobWorld):
    timeout = 300

    async def live_world(self, more_toml: str) -> TransferWorld:
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        world = TransferWorld(root, self.server, s3_link=LinkProfile(), cloud_toml=JOBS_TOML + more_toml)
        self.addCleanup(world.stop)
        await world.start()
        return world

    async def events(self, world: TransferWorld, on_frame: Any = None) -> EventStream:
        stream = EventStream(reactor, f"http://127.0.0.1:{world.edge_port}", world.api_key, on_frame)
        await stream.open()
        self.addCleanup(stream.close)
        return stream

    async def log(self, world: TransferWorld, job_id: str, offset: int = 0) -> tuple[int, bytes, Headers]:
        response = await treq.get(
            f"http://127.0.0.1:{world.edge_port}/api/v1/jobs/{job_id}/log?offset={offset}",
            headers={"Authorization": [f"Bearer {world.api_key}"]}, persistent=False,
        )
        return response.code, await response.content(), response.headers

    async def test_log_followed_across_an_outage(self) -> None:
        world = await self.live_world(LONG + SLEEPER)
        [(upload_id, _)] = await self.uploaded(world, (1000, 5))
        follower: LogFollower | None = None
        fetches: list[Any] = []

        def on_frame(frame: Any) -> None:
            if follower is not None:
                fetched = follower.event(frame)
                if fetched is not None:
                    fetches.append(fetched)

        stream = await self.events(world, on_frame)
        job_id = await self.submit(world, "long", [upload_id])
        follower = LogFollower(f"http://127.0.0.1:{world.edge_port}", world.api_key, job_id)

        def lines() -> int:
            return bytes(follower.data).count(b"line ") if follower is not None else 0

        await world.wait_for("a third of the log seen live", lambda: lines() >= LONG_LINES // 3, 60)
        # The edge's broker connection cut for 30 s: reset, and a link that
        # carries nothing, so that its reconnections hang too.
        world.amqp_link.stall_all(30.0)
        world.amqp_link.reset_all()
        cut_at = time.monotonic()
        await sleep(1.0)  # what the edge had received before the cut is told by now
        seen_at_cut = lines()
        await sleep(25.0)
        seen_in_outage = lines() - seen_at_cut
        await world.wait_for("the whole log", lambda: follower is not None and follower.eof, 90)
        for fetched in fetches:
            await fetched
        self.assertEqual(seen_in_outage, 0, "the outage let the log through")
        self.assertLess(seen_at_cut, LONG_LINES * 2 // 3, "the job went on printing through the outage")
        job = await self.finished(world, job_id)
        self.assertEqual(job["state"], "succeeded", job["error"])

        expected = [f"line {i} of the log" for i in range(1, LONG_LINES + 1)]
        text = bytes(follower.data).decode()
        self.assertEqual([line for line in text.splitlines() if line.startswith("line ")], expected)
        code, body, headers = await self.log(world, job_id)
        self.assertEqual(code, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"])
        self.assertEqual(body, bytes(follower.data), "the log endpoint holds what the events told")
        self.assertEqual(body, self.result(world, job, ".log"), "the edge's log is the stored log")
        self.assertEqual(headers.getRawHeaders("x-log-complete"), ["1"])
        # The events alone: each one continues the previous one (nothing twice, no gap).
        told = stream.of("job.log", job_id)
        self.assertEqual([f.data["offset"] for f in told[1:]], [f.data["end"] for f in told[:-1]])
        self.assertEqual(follower.fetched, [], "nothing had to be fetched")
        self.assertGreater(time.monotonic() - cut_at, 5.0)
        self.assertGreater(world.amqp_link.counters.resets_injected, 0)
        # States and progress, live.
        await world.wait_for("the edge sees the job succeed", lambda: any(
            f.data["state"] == "succeeded" for f in stream.of("job.state", job_id)), 30)
        states = [f.data["state"] for f in stream.of("job.state", job_id)]
        self.assertEqual(states[-1], "succeeded")
        self.assertIn("running", states)
        progress = [f.data["progress"] for f in stream.of("job.progress", job_id)]
        self.assertEqual(progress, sorted(progress))
        self.assertEqual(progress[-1], 1.0)
        self.assertIn("at 300", [f.data["status"] for f in stream.of("job.progress", job_id)])

        # The job as the API shows it; its log as a result file, so listed.
        code, answer = await world.api("GET", f"/api/v1/jobs/{job_id}")
        self.assertEqual(code, 200)
        shown = answer["job"]
        self.assertEqual((shown["state"], shown["attempts"], shown["kind"]), ("succeeded", 1, "long"))
        self.assertEqual(shown["inputs"], [upload_id])
        self.assertEqual(shown["log"]["end"], len(body))
        self.assertIsNotNone(shown["started_at"])
        self.assertEqual([r["name"] for r in shown["results"]], [f"long-{job_id[:8]}.log"])
        code, answer = await world.api("GET", f"/api/files?project={world.project}")
        kinds = {f["id"]: (f["kind"], f["job_id"]) for f in answer["files"]}
        self.assertEqual(kinds[upload_id], ("upload", None))
        self.assertEqual(kinds[shown["results"][0]["id"]], ("result", job_id))
        code, answer = await world.api("GET", f"/api/v1/jobs?project={world.project}")
        self.assertEqual([j["id"] for j in answer["jobs"]], [job_id])
        code, _, _ = await self.log(world, job_id, len(body) + 1)
        self.assertEqual(code, 416)

        # A job that runs past its timeout: timed_out, at the cloud and the edge.
        sleeper = await self.submit(world, "sleeper", [upload_id])
        job = await self.finished(world, sleeper)
        self.assertEqual(job["state"], "timed_out", job["error"])
        self.assertIn("timed out after 2 s", job["error"])
        await world.wait_for("the edge sees timed_out", lambda: any(
            f.data["state"] == "timed_out" for f in stream.of("job.state", sleeper)), 30)
        code, answer = await world.api("GET", f"/api/v1/jobs/{sleeper}")
        self.assertEqual(answer["job"]["state"], "timed_out")

    async def test_batches_lost_for_good_are_asked_for_again(self) -> None:
        """
        The edge's queue purged while the edge is cut off: the batches in it
        are gone.  The edge notices the gap when the next batch comes, asks
        for the missing bytes, and the worker sends them again.
        """
        lines = 600
        world = await self.live_world(chatty("long", lines))
        [(upload_id, _)] = await self.uploaded(world, (1000, 7))
        follower: LogFollower | None = None

        def on_frame(frame: Any) -> None:
            if follower is not None:
                assert follower.event(frame) is None, "a range had to be fetched"

        stream = await self.events(world, on_frame)
        job_id = await self.submit(world, "long", [upload_id])
        follower = LogFollower(f"http://127.0.0.1:{world.edge_port}", world.api_key, job_id)
        await world.wait_for("the log seen live", lambda: bytes(follower.data).count(b"line ") >= 60, 60)
        world.amqp_link.stall_all(8.0)
        world.amqp_link.reset_all()
        await sleep(3.0)
        queue = "relay.to-edge.edge-1"

        def waiting() -> int:
            for line in rabbitmqctl("list_queues", "-p", world.vhost.name, "name", "messages").splitlines():
                name, _, count = line.partition("\t")
                if name == queue:
                    return int(count)
            return 0

        lost = await deferToThread(waiting)
        self.assertGreater(lost, 0, "batches waiting for the edge")
        await deferToThread(rabbitmqctl, "purge_queue", "-p", world.vhost.name, queue)
        await world.wait_for("the whole log", lambda: follower is not None and follower.eof, 90)
        text = bytes(follower.data).decode()
        self.assertEqual([line for line in text.splitlines() if line.startswith("line ")],
                         [f"line {i} of the log" for i in range(1, lines + 1)])
        told = stream.of("job.log", job_id)
        self.assertEqual([f.data["offset"] for f in told[1:]], [f.data["end"] for f in told[:-1]])
        self.assertIn("missing, asked for", world.edge.log_text())
        self.assertIn("log ranges again", world.cloud.log_text())
        job = await self.finished(world, job_id)
        self.assertEqual(bytes(follower.data), self.result(world, job, ".log"))

    async def test_a_gigabyte_of_output(self) -> None:
        world = await self.live_world(FLOOD)
        [(upload_id, _)] = await self.uploaded(world, (1000, 6))
        assert world.cloud.process is not None
        pid = world.cloud.process.pid
        before = _vm(pid, "VmHWM")
        started = time.monotonic()
        job_id = await self.submit(world, "flood", [upload_id])
        # head(1) ends only once its 1 GiB went through the pipe to the worker.
        job = await self.finished(world, job_id, timeout=240)
        peak = _vm(pid, "VmHWM")
        self.assertEqual(job["state"], "succeeded", job["error"])
        print(f"\n1 GiB of output in {time.monotonic() - started:.1f} s; cloud VmHWM before the job "
              f"{before / (1 << 20):.1f} MiB, after it {peak / (1 << 20):.1f} MiB")
        self.assertLess(peak, 200 << 20)
        stored = self.result(world, job, ".log")
        marker = cut_marker(FLOOD_LOG_LIMIT)
        self.assertEqual(len(stored), FLOOD_LOG_LIMIT + len(marker))
        self.assertTrue(stored.endswith(marker))

        async def complete() -> bool:
            code, _, headers = await self.log(world, job_id)
            return code == 200 and headers.getRawHeaders("x-log-complete") == ["1"]

        for _ in range(300):
            if await complete():
                break
            await sleep(0.1)
        code, body, headers = await self.log(world, job_id)
        tail = 256 * 1024
        self.assertEqual(int(headers.getRawHeaders("x-log-end")[0]), len(stored))
        self.assertEqual(int(headers.getRawHeaders("x-log-start")[0]), len(stored) - tail)
        self.assertEqual(body, stored[-tail:])
        [(held,)] = read_db(world.edge_dir / "edge.db", "SELECT sum(length(data)) FROM job_log_chunks")
        self.assertLessEqual(held, tail + 64 * 1024)
        code, answer = await world.api("GET", f"/api/v1/jobs/{job_id}")
        self.assertEqual(answer["job"]["log"], {"attempt": 1, "start": len(stored) - tail, "end": len(stored),
                                                "complete": True})


def _vm(pid: int, field: str) -> int:
    """
    A field of /proc/<pid>/status, in bytes.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")

