"""
What L{relay.edge.uploads.service.UploadService} hands its helpers, the
recovery at startup (L{relay.edge.uploads.recovery}) and the joining of
partial uploads (L{relay.edge.uploads.concatenation}): the receiver's
limits, and the few parts and steps of the service they use, as a
protocol of their own, so that they need not import the service that
imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.edge.auth import Principal
from relay.edge.uploads.locks import UploadLocks
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import Upload, UploadStore
from relay.edge.uploads.tus import Creation
from relay.threads import Threads


@dataclass(frozen=True)
class UploadLimits:
    """
    The limits the receiver enforces (from the C{[uploads]} table).

    @ivar max_size: largest upload in bytes (C{Tus-Max-Size}).
    @ivar user_quota: bytes one user's uploads may hold in the spool at once,
        until the transfer stage has moved them on (0: no cap).
    @ivar disk_reserve: free bytes the spool's disk always keeps.
    @ivar expiry: seconds an unfinished upload lives after its last write.
    @ivar lock_stale_after: seconds without progress after which a newer
        request takes an upload over.
    @ivar lock_wait: how long a newer request waits before 423.
    @ivar checksum_memory: bytes of a checksummed body held in memory before
        they go to an encrypted scratch file.
    @ivar max_unfinished: unfinished uploads one user may have at once.
    """

    max_size: int = 64 << 30
    user_quota: int = 0
    disk_reserve: int = 1 << 30
    expiry: float = 24 * 3600.0
    lock_stale_after: float = 2.0
    lock_wait: float = 5.0
    checksum_memory: int = 4 << 20
    max_unfinished: int = 100



class UploadContext(Protocol):
    """
    The service as its helpers see it.
    """

    prefix: str
    store: UploadStore
    spool: Spool
    locks: UploadLocks
    threads: Threads
    limits: UploadLimits

    def now(self) -> float:
        """
        The reactor's time.
        """

    async def project_for(self, principal: Principal, creation: Creation) -> str:
        """
        The project a new upload goes to (its metadata's, checked, or the
        principal's default).
        """

    async def complete(self, upload: Upload) -> Upload:
        """
        Every byte is durable: record it and hand the upload on.
        """

    def hand_off(self, upload: Upload) -> None:
        """
        Hand a staged upload to the sink (again).
        """

    async def erase(self, upload_ids: Sequence[str] | dict[str, None]) -> None:
        """
        Erase uploads' spool files and records.
        """
