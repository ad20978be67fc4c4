"""
Jobs end to end, with the real parts: a file uploaded through an edge
reaches S3, a job on it is submitted at the edge's API, a worker in the
cloud runs the shipped example kind, and its results land in S3 and in the
registry, and the edge sees the job succeed.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import tarfile
import time
from pathlib import Path
from typing import Any

import treq

from relay.replication import FINAL_JOB_STATES
from relay.testing.linkemu import LinkProfile
from relay.testing.transfer_world import read_db
from tests.conftest import ROOT
from tests.edge.transfer.world import MotoTestCase, TransferWorld, sleep

#: The shipped kinds (etc/cloud.toml's [jobs] tables), with a short lease.
SHIPPED_JOBS = (ROOT / "etc" / "cloud.toml").read_text().split("\n[jobs]\n", 1)[1]
JOBS_TOML = "[jobs]\n" + SHIPPED_JOBS.replace("lease = 15.0", "lease = 4.0")


class JobWorld(MotoTestCase):
    """
    The servers and helpers the job tests share (no tests of its own).
    """

    timeout = 180

    async def world(self) -> TransferWorld:
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        world = TransferWorld(root, self.server, s3_link=LinkProfile(), cloud_toml=JOBS_TOML)
        self.addCleanup(world.stop)
        await world.start()
        return world

    def cloud_job(self, world: TransferWorld, job_id: str) -> Any:
        rows = read_db(world.root / "cloud" / "cloud.db", "SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    async def uploaded(self, world: TransferWorld, *files: tuple[int, int] | bytes) -> list[tuple[str, str]]:
        """
        Files staged at the edge (sizes and seeds, or contents), then the
        edge started: they are in the cloud when this returns.
        """
        staged = [world.stage(f[0], f[1]) if isinstance(f, tuple) else world.stage(0, 0, content=f,
                  filename="counter.v") for f in files]
        world.edge.start()
        await world.wait_done([upload_id for upload_id, _ in staged], timeout=60)
        for upload_id, _ in staged:
            [row] = read_db(world.root / "cloud" / "cloud.db", "SELECT * FROM files WHERE id = ?", (upload_id,))
            self.assertEqual((row["kind"], row["uploaded_by"]), ("upload", world.user))
        return staged

    async def submit(self, world: TransferWorld, kind: str, inputs: list[str], **parameters: Any) -> str:
        code, answer = await world.api(
            "POST", "/api/jobs", {"project_id": world.project, "kind": kind, "parameters": parameters,
                                  "inputs": inputs},
        )
        self.assertEqual(code, 202, answer)
        return str(answer["job"]["id"])

    async def finished(self, world: TransferWorld, job_id: str, timeout: float = 90) -> Any:
        def done() -> bool:
            job = self.cloud_job(world, job_id)
            return job is not None and job["state"] in FINAL_JOB_STATES

        await world.wait_for(f"job {job_id} finished", done, timeout)
        return self.cloud_job(world, job_id)

    def result(self, world: TransferWorld, job: Any, suffix: str) -> bytes:
        for file_id in json.loads(job["result_files"]):
            row = read_db(world.root / "cloud" / "cloud.db", "SELECT * FROM files WHERE id = ?", (file_id,))[0]
            if row["name"].endswith(suffix):
                self.assertEqual((row["kind"], row["uploaded_by"]), ("result", world.user), "made by the submitter's job")
                data = self.server.client().get_object(Bucket=self.server.bucket, Key=row["object_key"])["Body"].read()
                self.assertEqual(hashlib.sha256(data).hexdigest(), row["sha256"])
                self.assertEqual(len(data), row["size"])
                return bytes(data)
        raise AssertionError(f"no result ending in {suffix}: {job['result_files']}")



class JobsEndToEnd(JobWorld):
    async def test_checksum_and_archive_kinds(self) -> None:
        world = await self.world()
        (first, first_sha), (second, second_sha) = await self.uploaded(world, (300_000, 1), (70_000, 2))
        job_id = await self.submit(world, "checksum", [first, second])
        job = await self.finished(world, job_id)
        self.assertEqual(job["state"], "succeeded", job["error"])
        report = json.loads(self.result(world, job, "checksums.json"))
        self.assertEqual([f["sha256"] for f in report["files"]], [first_sha, second_sha])
        self.assertEqual([f["size"] for f in report["files"]], [300_000, 70_000])
        self.assertIn(b"::progress 1.000", self.result(world, job, ".log"))
        self.assertEqual(job["progress"], 1.0)

        archive_id = await self.submit(world, "archive", [first, second])
        archived = await self.finished(world, archive_id)
        self.assertEqual(archived["state"], "succeeded", archived["error"])
        with tarfile.open(fileobj=io.BytesIO(self.result(world, archived, "archive.tar.gz"))) as tar:
            digests = sorted(hashlib.sha256(tar.extractfile(m).read()).hexdigest() for m in tar.getmembers())  # type: ignore[union-attr]
        self.assertEqual(digests, sorted([first_sha, second_sha]))

        # The edge sees both jobs succeed (sync), with their result files.
        async def edge_state() -> list[str]:
            code, answer = await world.api("GET", f"/api/jobs?project={world.project}")
            return sorted(j["state"] for j in answer["jobs"])

        for _ in range(100):
            if await edge_state() == ["succeeded", "succeeded"]:
                break
            await sleep(0.1)
        self.assertEqual(await edge_state(), ["succeeded", "succeeded"])

        # The results are at the edge already: small ones came over the
        # link with their registration (no GET from S3), and download.
        results = json.loads(job["result_files"]) + json.loads(archived["result_files"])
        cached = lambda: read_db(world.edge_dir / "edge.db", "SELECT file_id FROM cache_files WHERE state = 'cached'")  # noqa: E731
        await world.wait_for("results cached", lambda: set(results) <= {r[0] for r in cached()}, 30)
        metrics = world.edge_metrics()
        self.assertEqual(metrics["relay_download_inline_results"], len(results))
        self.assertEqual(metrics["relay_download_bytes_fetched"], 0)
        for file_id in results:
            response = await treq.get(f"http://127.0.0.1:{world.edge_port}/api/v1/files/{file_id}/content",
                                      headers={"Authorization": [f"Bearer {world.api_key}"]}, persistent=False)
            body = await response.content()
            row = read_db(world.root / "cloud" / "cloud.db", "SELECT sha256 FROM files WHERE id = ?", (file_id,))[0]
            self.assertEqual((response.code, hashlib.sha256(body).hexdigest()), (200, row["sha256"]))

    async def test_synth_kind_runs_yosys(self) -> None:
        world = await self.world()
        design = (ROOT / "tests" / "cloud" / "jobs" / "counter.v").read_bytes()
        [(source, _)] = await self.uploaded(world, design)
        job_id = await self.submit(world, "synth", [source], top="counter")
        job = await self.finished(world, job_id, timeout=120)
        self.assertEqual(job["state"], "succeeded", job["error"])
        netlist = json.loads(self.result(world, job, "netlist.json"))
        self.assertIn("counter", netlist["modules"])
        self.assertIn(b"Number of cells", self.result(world, job, "stat.txt"))

    async def test_bad_requests_are_refused_at_the_edge_and_again_in_the_cloud(self) -> None:
        world = await self.world()
        [(upload_id, _)] = await self.uploaded(world, (1000, 3))
        # The catalogue reached the edge through sync, without commands.
        code, answer = await world.api("GET", "/api/v1/job-kinds")
        self.assertEqual((code, [k["name"] for k in answer["kinds"]]), (200, ["archive", "checksum", "synth"]))
        self.assertEqual(answer["kinds"][2]["parameters"]["properties"]["top"]["pattern"], "^[A-Za-z_][A-Za-z0-9_$]*$")
        self.assertNotIn("relay-job", json.dumps(answer))
        bad = [
            ("no-such-kind", {}, 400, "no job kind 'no-such-kind'"),
            ("synth", {"top": "-o/etc/passwd"}, 400, "parameter top: '-o/etc/passwd' does not match"),
            ("synth", {"top": "../x"}, 400, "parameter top: '../x' does not match"),
            ("checksum", {"extra": 1}, 400, "parameters: Additional properties are not allowed"),
        ]
        for kind, parameters, status, reason in bad:
            code, answer = await world.api("POST", "/api/v1/jobs", {
                "project_id": world.project, "kind": kind, "parameters": parameters, "inputs": [upload_id]})
            self.assertEqual((kind, code), (kind, status))
            self.assertTrue(answer["error"].startswith(reason), answer)
        code, answer = await world.api("POST", "/api/v1/jobs", {
            "project_id": world.project, "kind": "checksum", "inputs": ["0" * 32]})
        self.assertEqual((code, answer["error"]), (404, f"input file {'0' * 32} is not in this project"))
        self.assertEqual(read_db(world.root / "edge" / "edge.db", "SELECT count(*) FROM pending_commands")[0][0], 0)

        # An edge that sends them anyway (its catalogue stale or forged):
        # the cloud refuses each, and nothing runs.
        edge_db = sqlite3.connect(world.root / "edge" / "edge.db", timeout=10)
        with edge_db:
            edge_db.execute("UPDATE replica_job_kinds SET parameters = '{\"type\":\"object\"}', arguments = '[]'")
            edge_db.execute("INSERT INTO replica_job_kinds SELECT 'no-such-kind', description, parameters, "
                            "arguments, min_inputs, max_inputs, timeout FROM replica_job_kinds WHERE name = 'synth'")
        edge_db.close()
        bad.append(("synth", {"top": "-o"}, 0, ""))
        for number, (kind, parameters, _, _) in enumerate(bad, start=1):
            job_id = await self.submit(world, kind, [upload_id], **parameters)
            await world.wait_for(f"the cloud's answer to {kind} {parameters}",
                                 lambda n=number: self.answered(world) == n, 20)
            self.assertIsNone(self.cloud_job(world, job_id), (kind, parameters))
        rows = read_db(world.root / "cloud" / "cloud.db", "SELECT count(*) FROM job_runs")
        self.assertEqual(rows[0][0], 0)
        rows = read_db(world.root / "cloud" / "cloud.db", "SELECT count(*), min(status) FROM commands")
        self.assertEqual(tuple(rows[0]), (len(bad), "rejected"))

    def answered(self, world: TransferWorld) -> int:
        """
        How many job requests the cloud answered; it fails if one was applied.
        """
        rows = read_db(world.root / "cloud" / "cloud.db", "SELECT status FROM commands WHERE type = 'job.submit'")
        assert all(r[0] == "rejected" for r in rows), [tuple(r) for r in rows]
        return len(rows)


class WorkerKilled(JobWorld):
    """
    The cloud (its worker) killed with C{kill -9} in the middle of a job:
    the job's processes die with it, and the restarted cloud runs the job
    again once the lease expires, counted as a second attempt.
    """

    async def test_kill_9_mid_job_runs_it_again(self) -> None:
        root = Path(self.mktemp()).resolve()
        root.mkdir(parents=True)
        runs = root / "runs.txt"
        slow = (
            "\n[jobs.kinds.slow]\n"
            f'command = ["sh", "-c", "echo $$ >> {runs}; sleep 3; echo finished > out.txt"]\n'
            'results = ["out.txt"]\nattempts = 3\n'
        )
        world = TransferWorld(root, self.server, s3_link=LinkProfile(), cloud_toml=JOBS_TOML + slow)
        self.addCleanup(world.stop)
        await world.start()
        [(upload_id, _)] = await self.uploaded(world, (1000, 4))
        job_id = await self.submit(world, "slow", [upload_id])
        await world.wait_for("the first run started", lambda: runs.exists() and runs.read_text().count("\n") == 1, 30)
        first_pid = int(runs.read_text().split()[0])
        world.cloud.kill()
        killed_at = time.monotonic()
        for _ in range(100):
            if not _alive(first_pid):
                break
            await sleep(0.05)
        self.assertFalse(_alive(first_pid), "the killed worker's job process survived")
        world.cloud.start()
        job = await self.finished(world, job_id, timeout=60)
        self.assertEqual(job["state"], "succeeded", job["error"])
        self.assertLess(time.monotonic() - killed_at, 30)
        self.assertEqual(runs.read_text().count("\n"), 2, "one run per attempt, no more")
        [run] = read_db(world.root / "cloud" / "cloud.db", "SELECT attempts, epoch FROM job_runs WHERE job_id = ?",
                        (job_id,))
        self.assertEqual((run["attempts"], run["epoch"]), (2, 2))
        self.assertEqual(self.result(world, job, "out.txt"), b"finished\n")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
