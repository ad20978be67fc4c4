"""
Where a transfer's progress and outcome go: the upload's record (the
uploads API shows its state, C{transferred} and error), memory
(L{TransferReports.get}), and the owner's live events (C{upload.state},
C{transfer.progress}: L{relay.edge.uploads.announcer}).
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from relay.edge.transfer.journal import Confirmed, Job
from relay.edge.uploads.announcer import UploadAnnouncer
from relay.edge.uploads.store import UploadState, UploadStore


@dataclass(frozen=True)
class TransferProgress:
    """Bytes S3 has confirmed of an upload, and its state."""

    upload_id: str
    confirmed: int
    size: int
    state: str


class TransferReports:
    """
    Tells the upload's record (in the uploads' C{store}), and its owner,
    how its transfer goes.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, announce: UploadAnnouncer, store: UploadStore) -> None:
        self._clock = clock
        self.announce = announce
        self.store = store
        self._latest: dict[str, TransferProgress] = {}

    def get(self, upload_id: str) -> TransferProgress | None:
        """The latest progress of an upload's transfer (since this start)."""
        return self._latest.get(upload_id)

    def progressed(self, job: Job, confirmed: Confirmed) -> None:
        """S3 holds C{confirmed} of the upload now."""
        upload_id = job.upload_id
        self._latest[upload_id] = TransferProgress(upload_id, confirmed.bytes, job.size, UploadState.TRANSFERRING.value)
        self.store.record_transferred(upload_id, confirmed.bytes, self._clock.seconds()).addErrback(
            lambda f: self.log.failure("recording progress of {upload_id}", f, upload_id=upload_id)
        )
        self.announce.transferred(job.owner, upload_id, confirmed.bytes, job.size, confirmed.parts, job.part_count)

    async def moved(self, upload_id: str, owner: str, size: int, state: UploadState, *,
                    transferred: int | None = None, error: str | None = None) -> None:
        """
        The upload is in C{state} now (C{error}: why it failed): its record
        says so, then its owner hears it.
        """
        await self.store.set_state(upload_id, state, self._clock.seconds(), transferred=transferred, error=error)
        last = self._latest.get(upload_id)
        confirmed = transferred if transferred is not None else (last.confirmed if last else 0)
        self._latest[upload_id] = TransferProgress(upload_id, confirmed, size, state.value)
        self.announce.state(owner, upload_id, state.value, error if state is UploadState.FAILED else None)
