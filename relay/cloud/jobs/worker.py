"""
A worker: takes jobs from C{relay.jobs}, one per free slot, and runs them.

For each delivery: claim the job (L{JobLeases.claim}, committed), then
acknowledge the delivery, then run.  While the job runs, its lease is
renewed once a second together with its progress; a renewal that finds the
job cancelled, or the lease given to another attempt, stops the run.  The
outcome and the result files are recorded only if the lease still holds.

The consumer is subscribed only while a slot is free: deliveries are
acknowledged as soon as they are claimed, so the broker's prefetch cannot
count running jobs; the worker cancels its consumer when its slots are
full and subscribes again when one frees.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from relay.cloud.jobs.kinds import BadRequest, JobKind
from relay.cloud.jobs.leases import Claim, Input, JobLeases
from relay.cloud.jobs.live import LiveLog
from relay.cloud.jobs.output import RunLog
from relay.cloud.jobs.runner import JobProcess, Limits, Outcome
from relay.cloud.jobs.runuser import RunUser
from relay.cloud.objects import IObjectStore, object_key
from relay.cloud.registry.store import new_id
from relay.db import Database
from relay.download_messages import INLINE_MAX
from relay.link.channel import Delivery, LinkDown
from relay.link.envelope import JOBS, BadEnvelope, Envelope
from relay.link.outbox import IOutbox
from relay.threads import Blocking

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """
    A file name for the work directory: ASCII letters, digits, '.', '_'
    and '-', never starting with '-' or '.'.
    """
    cleaned = _SAFE.sub("_", name)[-100:].lstrip(".-") or "file"
    return cleaned


def _sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class RunFailed(Exception):
    """
    The run could not go ahead (an input could not be fetched, results
    could not be stored); C{str()} is the job's error.
    """


class JobWorker(Service):
    """
    Runs up to C{slots} jobs at once.

    @param link: the bridge's link (its C{channel} while up).
    @param outbox: where the runs' live logs go (L{LiveLog}).
    @param name: this worker in the registry's leases (unique per process).
    @param run_as: the user the commands run as (the worker is root,
        L{relay.cloud.jobs.runuser}); C{None}: the worker's own.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, db: Database, leases: JobLeases, objects: IObjectStore,
        kinds: Mapping[str, JobKind], blocking: Blocking, link: Any, *, name: str, slots: int,
        work_dir: Path, grace: float, outbox: IOutbox, run_as: RunUser | None = None,
    ) -> None:
        self._reactor = reactor
        self._db = db
        self._leases = leases
        self._objects = objects
        self._kinds = kinds
        self._blocking = blocking
        self._link = link
        self._outbox = outbox
        self.name = name
        self._slots = slots
        self._work_dir = work_dir
        self._grace = grace
        self._run_as = run_as
        self._reserved = 0
        self._consumer: tuple[Any, str] | None = None
        self._subscribing = False
        self._runs: dict[str, JobProcess] = {}
        self._running: set[Deferred[None]] = set()
        self.runs_started = 0

    # -- the consumer ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._run_as is not None:
            # The run user must pass through to its own run's directory
            # (searchable, not listable), and so through every parent.
            self._work_dir.chmod(0o711)
            closed = self._run_as.unsearchable(self._work_dir)
            if closed is not None:
                self.log.error(
                    "jobs.work_dir: the run user {user} cannot pass through {closed}: its commands will "
                    "not find their HOME and TMPDIR; make it searchable (chmod o+x) or move work_dir",
                    user=self._run_as.name, closed=str(closed),
                )

    def link_up(self) -> None:
        """
        The link is (back) up, on a new channel: subscribe if a slot is free.
        """
        self._consumer = None
        self._subscribing = False
        self._adjust()

    def _adjust(self) -> None:
        if not self.running:
            return
        channel = self._link.channel
        if self._reserved < self._slots and self._consumer is None and not self._subscribing and channel:
            self._subscribing = True

            async def subscribe() -> None:
                try:
                    tag = await channel.consume(JOBS, self._deliver, prefetch=self._slots - self._reserved)
                    self._consumer = (channel, tag)
                finally:
                    self._subscribing = False
                self._adjust()

            Deferred.fromCoroutine(subscribe()).addErrback(self._link_trouble, "subscribe")
        elif self._reserved >= self._slots and self._consumer is not None:
            channel, tag = self._consumer
            self._consumer = None
            Deferred.fromCoroutine(channel.cancel(tag)).addErrback(self._link_trouble, "cancel the consumer")

    def _link_trouble(self, failure: Any, what: str) -> None:
        if not failure.check(LinkDown):
            self.log.failure("could not {what} on relay.jobs", failure, what=what)

    def _deliver(self, delivery: Delivery) -> None:
        if self._reserved >= self._slots or not self.running:
            _settle(lambda: delivery.nack(requeue=True))  # in flight before the cancel: for another worker
            return
        self._reserved += 1
        self._adjust()
        done = Deferred.fromCoroutine(self._take(delivery))
        self._running.add(done)
        done.addErrback(lambda f: self.log.failure("job delivery failed", f))
        done.addBoth(lambda _: self._running.discard(done))

    async def _take(self, delivery: Delivery) -> None:
        try:
            try:
                job_id = Envelope.from_bytes(delivery.body).body["job_id"]
                if not isinstance(job_id, str):
                    raise BadEnvelope("job_id is not a string")
            except (BadEnvelope, KeyError, TypeError) as e:
                self.log.warn("dropping a malformed job message: {error}", error=e)
                _settle(lambda: delivery.reject(requeue=False))
                return
            try:
                claim = await self._db.run(self._leases.claim, job_id, self.name, self._reactor.seconds())
            except Exception:
                self.log.failure("could not claim job {job_id}", job_id=job_id)
                _settle(lambda: delivery.nack(requeue=True))
                return
            # The claim is committed: the delivery's work is done.  From here
            # the lease, not the broker, keeps the job.
            _settle(delivery.ack)
            if claim is not None:
                await self._run(claim)
        finally:
            self._reserved -= 1
            self._adjust()

    # -- a run -----------------------------------------------------------------

    async def _run(self, claim: Claim) -> None:
        self.runs_started += 1
        self.log.info(
            "job {job_id} attempt {attempt} (epoch {epoch}) starts on {worker}",
            job_id=claim.job_id, attempt=claim.attempt, epoch=claim.epoch, worker=self.name,
        )
        run_dir = self._work_dir / f"{claim.job_id}.{claim.epoch}"
        shutil.rmtree(run_dir, ignore_errors=True)
        (run_dir / "work" / "inputs").mkdir(parents=True, mode=0o700)
        (run_dir / "tmp").mkdir(mode=0o700)
        kind = self._kinds.get(claim.kind)
        log: RunLog | None = None

        def progress() -> tuple[float, str | None]:
            return (-1.0, None) if log is None else (log.progress, log.status)

        def stored(start: int, end: int) -> bytes:
            return b"" if log is None else log.read(start, end)

        live = LiveLog(self._reactor, self._db, self._outbox, self._leases, claim, progress, stored)
        log = RunLog(run_dir / "log", kind.limits.log_bytes if kind else 1 << 20, on_stored=live.write)
        log.path.chmod(0o600)  # the worker's, not the command's (a run user's)
        try:
            if kind is None:
                raise RunFailed(f"no job kind {claim.kind!r} is configured on the worker")
            try:
                kind.check(claim.parameters, [i.file_id for i in claim.inputs])
            except BadRequest as e:
                raise RunFailed(str(e)) from None
            paths = [await self._fetch(run_dir / "work", number, i) for number, i in enumerate(claim.inputs)]
            if self._run_as is not None:
                self._run_as.give(run_dir)
            outcome, why = await self._execute(claim, kind, run_dir, paths, log, live)
            await live.close()
            if why is not None:
                self.log.info("job {job_id} epoch {epoch} stopped: {why}", job_id=claim.job_id,
                              epoch=claim.epoch, why=why)
                return
            log.close()
            if await self._db.run(self._leases.holds, claim, self._reactor.seconds(), False) is not None:
                # Stopped or cut off past the lease (another attempt may have
                # the job): nothing of this run is stored, nothing recorded.
                self.log.warn("job {job_id} epoch {epoch} lost its lease: its results are not stored",
                              job_id=claim.job_id, epoch=claim.epoch)
                return
            results = await self._store(claim, kind, run_dir, log)
            state, error = outcome.state, None
            if state != "succeeded":
                error = f"{outcome.reason}\n{log.tail()}".strip()
            await self._finish(claim, state, results, error)
        except RunFailed as e:
            await self._finish(claim, "failed", [], str(e))
        finally:
            log.close()
            shutil.rmtree(run_dir, ignore_errors=True)

    async def _finish(self, claim: Claim, state: str, results: list[dict[str, Any]], error: str | None) -> None:
        recorded = await self._db.run(self._leases.finish, claim, state, self._reactor.seconds(), results, error)
        if recorded:
            self.log.info("job {job_id} {state}", job_id=claim.job_id, state=state)
        else:
            self.log.warn("job {job_id} epoch {epoch} lost its lease: its outcome is not recorded",
                          job_id=claim.job_id, epoch=claim.epoch)

    async def _fetch(self, work: Path, number: int, input: Input) -> str:
        relative = f"inputs/{number:03d}-{safe_name(input.name)}"
        try:
            size, sha256 = await self._objects.get_file(input.object_key, work / relative)
        except Exception as e:
            raise RunFailed(f"input {input.name} could not be fetched: {e}") from None
        if size != input.size or sha256 != input.sha256:
            raise RunFailed(f"input {input.name} does not match its registered size and sha256")
        return relative

    async def _execute(
        self, claim: Claim, kind: JobKind, run_dir: Path, paths: list[str], log: RunLog, live: LiveLog
    ) -> tuple[Outcome, str | None]:
        work = run_dir / "work"
        env = {
            # The worker's own bin directory first: the example kinds' tools.
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(work), "TMPDIR": str(run_dir / "tmp"), "LANG": "C.UTF-8",
        }
        limits = kind.limits
        # Touched at each renewal: the shepherd stops a run whose worker
        # stopped renewing (alive but stopped or cut off) before the lease
        # expires, as the worker itself gives up after 0.8 of it.
        lease_file = run_dir / "lease"
        lease_file.touch()
        process = JobProcess(
            self._reactor, kind.argv(claim.parameters, paths), work, env,
            Limits(limits.cpu_seconds, limits.memory_bytes, limits.open_files, limits.file_bytes),
            timeout=kind.timeout, grace=self._grace, on_output=log.write,
            lease=lease_file, lease_timeout=self._leases.lease * 0.8,
            user=None if self._run_as is None else (self._run_as.uid, self._run_as.gid),
        )
        stopped: list[str] = []
        reported = [-1.0]
        last_held = [self._reactor.seconds()]

        async def tick() -> None:
            live.soon()  # progress announced past the log's limit
            try:
                await live.serve()  # ranges edges asked for again
            except Exception:
                self.log.failure("could not send job {job_id}'s log again", job_id=claim.job_id)
            progress = log.progress if log.progress != reported[0] else -1.0
            try:
                lost = await self._db.run(self._leases.progress, claim, progress, self._reactor.seconds())
            except Exception:
                self.log.failure("could not renew the lease of job {job_id}", job_id=claim.job_id)
                if self._reactor.seconds() - last_held[0] > self._leases.lease * 0.8:
                    lost = "lost"
                else:
                    return
            else:
                last_held[0] = self._reactor.seconds()
                if lost is None:
                    os.utime(lease_file)
                if progress >= 0:
                    reported[0] = progress
            if lost is not None and not stopped:
                stopped.append("the job was cancelled" if lost == "cancelled" else "its lease was lost")
                process.stop("cancelled")

        renewing = LoopingCall(lambda: Deferred.fromCoroutine(tick()))
        renewing.clock = self._reactor
        self._runs[claim.job_id] = process
        process.start()
        renewing.start(1.0, now=False)
        try:
            outcome = await process.finished
        finally:
            if renewing.running:
                renewing.stop()
            self._runs.pop(claim.job_id, None)
        if self.running is False and not stopped:
            stopped.append("the worker is stopping")
        return outcome, (stopped[0] if stopped else None)

    async def _store(self, claim: Claim, kind: JobKind, run_dir: Path, log: RunLog) -> list[dict[str, Any]]:
        work = run_dir / "work"
        found: list[tuple[Path, str]] = []
        for pattern in kind.results:
            for path in sorted(work.glob(pattern)):
                # Regular files of the run's own: no symbolic link, and no
                # hard link (another name of a file the run user may not
                # read, which the worker would otherwise read for it).
                if (
                    path.is_file() and not path.is_symlink() and path.stat().st_nlink == 1
                    and path.resolve().is_relative_to(work.resolve())
                ):
                    if all(path != p for p, _ in found):
                        found.append((path, _content_type(path)))
        found.append((log.path, "text/plain; charset=utf-8"))
        results = []
        prefix = f"{claim.kind}-{claim.job_id[:8]}"
        for path, content_type in found:
            file_id = new_id()
            key = object_key(claim.project_id, file_id)
            size, sha256 = await self._blocking(_sha256, path)
            try:
                await self._objects.put_file(path, key, content_type)
            except Exception as e:
                raise RunFailed(f"result {path.name} could not be stored: {e}") from None
            name = f"{prefix}.log" if path == log.path else f"{prefix}-{path.name}"
            # Small results also go to the edges over the link (L{JobLeases.finish}).
            inline = await self._blocking(path.read_bytes) if size <= INLINE_MAX else None
            results.append({"file_id": file_id, "name": name, "size": size, "sha256": sha256, "object_key": key,
                            "content_type": content_type, "inline": inline})
        return results

    def stopService(self) -> Deferred[None]:
        """
        Stop taking jobs and stop the runs in progress; their leases expire
        and other workers run them again.
        """
        super().stopService()
        if self._consumer is not None:
            channel, tag = self._consumer
            self._consumer = None
            Deferred.fromCoroutine(channel.cancel(tag)).addErrback(lambda _: None)
        for process in list(self._runs.values()):
            process.stop("cancelled")
        return gatherResults(list(self._running), consumeErrors=True).addBoth(lambda _: None)


def _content_type(path: Path) -> str:
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def _settle(action: Callable[[], None]) -> None:
    try:
        action()
    except LinkDown:
        pass  # the delivery comes back on the next connection
