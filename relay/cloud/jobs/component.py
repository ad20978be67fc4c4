"""
The jobs component: command effects, the lease reaper, a worker, and the
builder that wires them.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from relay.cloud.commands import ICommandEffects
from relay.cloud.jobs.catalogue import CataloguePublication
from relay.cloud.jobs.kinds import JobKind
from relay.cloud.jobs.leases import JOB_RUN, JOB_RUN_SCHEMA, SCHEMA, JobLeases
from relay.cloud.jobs.live import SCHEMA as LOG_REQUESTS_SCHEMA
from relay.cloud.jobs.live import LogRequests
from relay.cloud.jobs.runuser import RunUser
from relay.cloud.jobs.worker import Blocking, JobWorker
from relay.cloud.objects import IObjectStore
from relay.db import Database
from relay.job_messages import register_types as register_job_messages
from relay.jobkinds import BadRequest, InputFile, check_inputs
from relay.permissions import Refused

__all__ = ["LOG_REQUESTS_SCHEMA", "SCHEMA", "JobDispatch", "JobReaper", "build_jobs"]


@implementer(ICommandEffects)
class JobDispatch:
    """
    What the cloud does when a command queues or cancels a job: refuse a
    request its kind refuses (the same checks as the edge's, which the
    cloud does not trust), else put the job on the work queue.  A
    cancelled job needs nothing more here: the worker running it finds out
    when it next renews its lease (within a second) and stops it.
    """

    def __init__(self, kinds: Mapping[str, JobKind], leases: JobLeases) -> None:
        self._kinds = kinds
        self._leases = leases

    def job_queued(self, conn: Any, job: Any) -> None:
        kind = self._kinds.get(job["kind"])
        if kind is None:
            raise Refused(f"no job kind {job['kind']!r}", "invalid")
        try:
            inputs = json.loads(job["inputs"])
            kind.check(json.loads(job["parameters"]), inputs)
            check_inputs(job["project_id"], inputs, lambda file_id: _stored(conn, file_id))
        except BadRequest as e:
            raise Refused(str(e), e.code) from None
        self._leases.dispatch(conn, job["id"], kind.attempts)

    def job_cancelled(self, conn: Any, job: Any) -> None:
        pass

    def file_deleted(self, conn: Any, file: Any) -> None:
        pass


def _stored(conn: Any, file_id: str) -> InputFile | None:
    row = conn.execute("SELECT project_id, state, object_key FROM files WHERE id = ?", (file_id,)).fetchone()
    if row is None:
        return None
    stored = row["state"] == "stored" and row["object_key"]
    return row["project_id"], None if stored else f"its state is {row['state']}"


class JobReaper(TimerService):
    """
    Every few seconds: jobs whose worker's lease expired go back on the
    queue, or fail after their last attempt.
    """

    log = Logger()

    def __init__(self, reactor: Any, db: Database, leases: JobLeases, outbox: Any, interval: float) -> None:
        super().__init__(interval, lambda: Deferred.fromCoroutine(self._reap()))
        self.clock = reactor
        self._reactor = reactor
        self._db = db
        self._leases = leases
        self._outbox = outbox

    async def _reap(self) -> None:
        try:
            done = await self._db.run(self._leases.reap, self._reactor.seconds())
        except Exception:
            self.log.failure("could not look for expired job leases")
            return
        if done:
            self._outbox.wake()
            for job_id, what in done:
                self.log.info("job {job_id} lost its worker: {what}", job_id=job_id, what=what)


class Jobs(MultiService):
    """
    The jobs component: its command effects, and the reaper and worker its
    role asks for.
    """

    def __init__(self, effects: JobDispatch, worker: JobWorker | None) -> None:
        super().__init__()
        self.effects = effects
        self.worker = worker


def build_jobs(
    config: Any, reactor: Any, db: Database, bridge: Any, registry: Any, objects: IObjectStore,
    blocking: Blocking, base: Path,
) -> Jobs:
    """
    The jobs component from the C{[jobs]} table.  Its C{effects} go to
    L{relay.cloud.commands.CloudCommands}; its worker subscribes each time
    the link comes up.
    """
    bridge.catalogue.register(JOB_RUN, JOB_RUN_SCHEMA, description="cloud -> relay.jobs: run one attempt of a job")
    register_job_messages(bridge.catalogue)
    LogRequests(reactor).register(bridge.inbox)
    leases = JobLeases(registry, bridge.outbox, config.lease)
    worker = None
    if config.role in ("worker", "both"):
        work_dir = config.work_dir if config.work_dir.is_absolute() else base / config.work_dir
        worker = JobWorker(
            reactor, db, leases, objects, config.kinds, blocking, bridge.link,
            name=config.worker_name or f"{socket.gethostname()}-{os.getpid()}",
            slots=config.slots, work_dir=work_dir, grace=config.grace, outbox=bridge.outbox,
            run_as=RunUser.named(config.run_user) if config.run_user else None,
        )
        bridge.when_up(worker.link_up)
    jobs = Jobs(JobDispatch(config.kinds, leases), worker)
    if config.role in ("dispatch", "both"):
        # The edges check requests against the kinds of the processes that
        # queue jobs.
        CataloguePublication(reactor, db, registry.log, config.kinds).setServiceParent(jobs)
    JobReaper(reactor, db, leases, bridge.outbox, interval=max(0.5, config.lease / 5)).setServiceParent(jobs)
    if worker is not None:
        worker.setServiceParent(jobs)
    return jobs
