"""
Who runs a job, and for how long: claims, leases and fencing epochs.

A job's run record (C{job_runs}) is the only thing that says a worker may
run it.  A worker claims a queued job in one statement (the lease is free
and the job is queued), which bumps the job's epoch; it then acknowledges
the broker's delivery, so no delivery stays unacknowledged while the job
runs (RabbitMQ's C{consumer_timeout} can never restart it).  The worker
renews its lease while it runs.  Every write a worker makes for a job
(progress, results, its outcome) happens in a transaction that first checks
the worker still holds the lease at its epoch: a worker whose lease expired
and was given to another attempt can publish nothing.  A lease that expires
is found by any process's L{JobLeases.reap}: the job is queued again for
another attempt, or fails once its attempts are used up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from relay.cloud.sync import ACTIVE_WITHIN, active_edges
from relay.db import Schema
from relay.download_messages import CONTENT
from relay.link.envelope import JOBS, to_edge
from relay.link.outbox import IOutbox

SCHEMA = Schema("jobs", [
    """
    CREATE TABLE job_runs (
        job_id TEXT PRIMARY KEY,
        max_attempts INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        epoch INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        lease_expires DOUBLE PRECISION
    );
    CREATE INDEX job_runs_lease ON job_runs (lease_expires);
    """,
    # No foreign key to the registry's jobs: each component's schema
    # migrates on its own.  A run whose job was deleted (with its project)
    # is dropped when its lease is next looked at.
])

#: The message that puts a job on C{relay.jobs}: one per attempt.
JOB_RUN = "job.run"
JOB_RUN_SCHEMA = {
    "type": "object",
    "properties": {"job_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
    "required": ["job_id"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Input:
    """
    One input file of a claimed job, as the registry has it.
    """

    file_id: str
    name: str
    size: int
    sha256: str
    object_key: str


@dataclass(frozen=True)
class Claim:
    """
    A worker's hold on one attempt of one job.
    """

    job_id: str
    project_id: str
    kind: str
    parameters: dict[str, Any]
    inputs: tuple[Input, ...]
    epoch: int
    attempt: int
    worker: str


class JobLeases:
    """
    The job run records, on the database thread (every method takes the
    caller's transaction).

    @param registry: moves the jobs' states (L{relay.cloud.registry.Registry}).
    @param outbox: where C{job.run} messages go.
    """

    def __init__(self, registry: Any, outbox: IOutbox, lease: float) -> None:
        self._registry = registry
        self._outbox = outbox
        self.lease = lease

    def dispatch(self, conn: Any, job_id: str, max_attempts: int) -> None:
        """
        A job was queued: record its run and put it on the work queue.
        """
        conn.execute("INSERT INTO job_runs (job_id, max_attempts) VALUES (?, ?)", (job_id, max_attempts))
        self._outbox.put(conn, JOB_RUN, {"job_id": job_id}, to=JOBS)

    def claim(self, conn: Any, job_id: str, worker: str, now: float) -> Claim | None:
        """
        Take the job for one attempt, or C{None} if it is not to be run
        (running elsewhere, cancelled, finished, deleted: a duplicate
        delivery).
        """
        row = conn.execute(
            "UPDATE job_runs SET epoch = epoch + 1, attempts = attempts + 1, worker = ?, lease_expires = ? "
            "WHERE job_id = ? AND lease_expires IS NULL AND EXISTS "
            "(SELECT 1 FROM jobs WHERE jobs.id = job_runs.job_id AND jobs.state = 'queued') "
            "RETURNING epoch, attempts",
            (worker, now + self.lease, job_id),
        ).fetchone()
        if row is None:
            return None
        self._registry.start_job(conn, job_id, int(row[1]))
        job = self._registry.job(conn, job_id)
        inputs = []
        for file_id in json.loads(job["inputs"]):
            file = self._registry.file(conn, file_id)
            if file is None or file["state"] != "stored" or not file["object_key"]:
                self._registry.finish_job(conn, job_id, "failed", error=f"input file {file_id} is not stored")
                self._release(conn, job_id)
                return None
            inputs.append(Input(file_id, file["name"], int(file["size"]), file["sha256"], file["object_key"]))
        return Claim(
            job_id, job["project_id"], job["kind"], json.loads(job["parameters"]), tuple(inputs),
            int(row[0]), int(row[1]), worker,
        )

    def holds(self, conn: Any, claim: Claim, now: float, renew: bool = True) -> str | None:
        """
        Renew the claim's lease; C{None} if it is still the claim's, else
        why not (C{"cancelled"}, C{"lost"}).
        """
        row = conn.execute(
            "UPDATE job_runs SET lease_expires = CASE WHEN ? = 1 THEN ? ELSE lease_expires END "
            "WHERE job_id = ? AND epoch = ? AND worker = ? AND lease_expires IS NOT NULL AND EXISTS "
            "(SELECT 1 FROM jobs WHERE jobs.id = job_runs.job_id AND jobs.state = 'running') "
            "RETURNING epoch",
            (int(renew), now + self.lease, claim.job_id, claim.epoch, claim.worker),
        ).fetchone()
        if row is not None:
            return None
        job = self._registry.job(conn, claim.job_id)
        return "cancelled" if job is not None and job["state"] == "cancelled" else "lost"

    def progress(self, conn: Any, claim: Claim, progress: float, now: float) -> str | None:
        """
        Renew the lease and record the progress, if the claim still holds.
        """
        lost = self.holds(conn, claim, now)
        if lost is None and progress >= 0:
            self._registry.set_progress(conn, claim.job_id, progress)
        return lost

    def finish(
        self, conn: Any, claim: Claim, state: str, now: float, results: list[dict[str, Any]], error: str | None
    ) -> bool:
        """
        Record the attempt's outcome and its result files, if the claim
        still holds; C{False} (and nothing recorded) if it does not.
        """
        if self.holds(conn, claim, now, renew=False) is not None:
            self._release(conn, claim.job_id, claim.epoch)
            return False
        submitter = self._registry.job(conn, claim.job_id)["submitted_by"]
        ids = [
            self._registry.put_file(
                conn, claim.project_id, result["name"], result["size"], sha256=result["sha256"],
                object_key=result["object_key"], file_id=result["file_id"], kind="result", job_id=claim.job_id,
                uploaded_by=submitter,
            )
            for result in results
        ]
        self._registry.finish_job(conn, claim.job_id, state, result_files=ids, error=error)
        self._release(conn, claim.job_id)
        # Small results go to the edges with their registration.
        small = [r for r in results if r.get("inline") is not None]
        for edge in active_edges(conn, now - ACTIVE_WITHIN) if small else ():
            for result in small:
                body = {
                    "file_id": result["file_id"], "size": result["size"], "sha256": result["sha256"],
                    "content_type": result.get("content_type", "")[:255],
                }
                self._outbox.put(conn, CONTENT, body, to=to_edge(edge), payload=result["inline"])
        return True

    def reap(self, conn: Any, now: float) -> list[tuple[str, str]]:
        """
        Every expired lease: its job queued again, or failed after its
        last attempt.  Returns (job id, what happened).
        """
        done = []
        expired = conn.execute(
            "SELECT job_id, epoch FROM job_runs WHERE lease_expires < ? ORDER BY lease_expires LIMIT 100", (now,)
        ).fetchall()
        for job_id, epoch in expired:
            row = conn.execute(
                "UPDATE job_runs SET worker = NULL, lease_expires = NULL "
                "WHERE job_id = ? AND epoch = ? AND lease_expires < ? RETURNING attempts, max_attempts",
                (job_id, epoch, now),
            ).fetchone()
            job = self._registry.job(conn, job_id)
            if job is None:  # deleted with its project meanwhile
                conn.execute("DELETE FROM job_runs WHERE job_id = ?", (job_id,))
                continue
            if row is None or job["state"] != "running":
                continue
            attempts, max_attempts = int(row[0]), int(row[1])
            if attempts < max_attempts:
                self._registry.requeue_job(conn, job_id)
                self._outbox.put(conn, JOB_RUN, {"job_id": job_id}, to=JOBS)
                done.append((job_id, "requeued"))
            else:
                self._registry.finish_job(
                    conn, job_id, "failed",
                    error=f"the worker running it was lost on each of its {attempts} attempts",
                )
                done.append((job_id, "failed"))
        return done

    def _release(self, conn: Any, job_id: str, epoch: int | None = None) -> None:
        if epoch is None:
            conn.execute("UPDATE job_runs SET worker = NULL, lease_expires = NULL WHERE job_id = ?", (job_id,))
        else:
            conn.execute(
                "UPDATE job_runs SET worker = NULL, lease_expires = NULL WHERE job_id = ? AND epoch = ?",
                (job_id, epoch),
            )
