"""
What the pieces of the transfer stage see of each other: a run
(L{relay.edge.transfer.run.TransferRun}) and the cloud's answers
(L{relay.edge.transfer.answers.CloudAnswers}) are handed the
L{relay.edge.transfer.service.TransferService} through these protocols,
never its private members, so neither module imports the service (and
the service's module imports both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import DeferredSemaphore
from twisted.internet.interfaces import IReactorTime

from relay.db import Database
from relay.edge.transfer.body import PartBody
from relay.edge.transfer.journal import Job
from relay.edge.transfer.planner import Part
from relay.edge.transfer.progress import TransferReports
from relay.edge.transfer.streams import StreamMemory, StreamStats
from relay.edge.transfer.tus_client import ITusTarget
from relay.edge.transfer.uploader import PartUploader
from relay.edge.uploads.spool import Spool
from relay.link.outbox import IOutbox
from relay.threads import Blocking


class RunAnswers(Protocol):
    """What the cloud's answers hand a run (in the reactor thread)."""

    @property
    def transfer_id(self) -> str: ...

    def urls(self, transfer_id: str, urls: dict[int, str], expires_in: int) -> None: ...

    def authorized(self, transfer_id: str, token: str, url: str, expires_in: int) -> None: ...

    def page(self, transfer_id: str, request_id: str, page: int, last: bool, parts: list[Any]) -> None: ...

    def send_directly(self) -> None: ...


class AnswerContext(Protocol):
    """What the cloud's answers reach of the stage."""

    clock: IReactorTime

    def after_commit(self, call: Callable[..., object], *args: Any) -> None:
        """Call C{call(*args)} in the reactor thread, after the inbox's transaction."""

    def wake(self, upload_id: str, interrupt: bool = False) -> None:
        """The upload's journal changed: its run looks again (one starts if none runs)."""

    def run_of(self, upload_id: str) -> RunAnswers | None: ...

    def run_for_transfer(self, transfer_id: str) -> RunAnswers | None: ...

    def start_over_in(self, conn: Any, upload_id: str, transfer_id: str, reason: str) -> None:
        """In the caller's transaction: the upload's transfer starts again under a new id."""


class RunContext(Protocol):
    """What a run uses of the stage: its settings, stores and shared parts, and how a job ends."""

    clock: IReactorTime
    db: Database
    settings: Any
    spool: Spool
    outbox: IOutbox
    reports: TransferReports
    uploader: PartUploader
    stream_stats: StreamStats
    #: Streams to the receiver at once, over all files (C{max_streams}).
    stream_slots: DeferredSemaphore
    #: Where the next file's stream count starts.
    stream_memory: StreamMemory
    blocking: Blocking
    #: Counters the runs add to (the stage's metrics).
    presign_requests: int
    hedges: int

    def tus_target(self) -> ITusTarget: ...

    def notify_outbox(self) -> None: ...

    def open_body(self, spool_id: str, part: Part) -> PartBody: ...

    async def start_over(self, job: Job, reason: str) -> None: ...

    async def fail(self, job: Job, reason: str, *, abort: bool = False) -> None: ...

    async def erase(self, job: Job) -> None: ...

    async def failed(self, job: Job) -> None: ...
