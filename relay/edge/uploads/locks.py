"""
One writer per upload.

A request that writes to an upload (PATCH, creation-with-upload,
termination, concatenation) holds the upload's L{Lease} while it does.  A
second request for the same upload waits a little; if the holder has gone
quiet (on a lossy link a dead connection is noticed late), the newcomer
takes over, as tusd does: the old connection is aborted, it keeps every
byte that arrived and releases the lease, and only then does the newcomer
start.  A holder that is still receiving keeps the upload, and the
newcomer gets 423 (clients retry it).  Bytes of two requests never
interleave.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from relay.tus.protocol import TusError

_POLL = 0.25


class Lease:
    """
    The right to write to one upload, held by one request.

    @ivar offset: bytes accepted so far by the holder (for progress reports;
        not necessarily durable yet).
    """

    def __init__(self, locks: UploadLocks, upload_id: str, abort: Callable[[], None]) -> None:
        self.upload_id = upload_id
        self.offset: int | None = None
        self._locks = locks
        self._abort = abort
        self._active = locks.clock.seconds()
        self._released = False
        self._waiters: list[Deferred[None]] = []

    def touch(self, offset: int | None = None) -> None:
        """The holder made progress."""
        self._active = self._locks.clock.seconds()
        if offset is not None:
            self.offset = offset

    @property
    def idle(self) -> float:
        return self._locks.clock.seconds() - self._active

    def abort(self) -> None:
        """Ask the holder to stop (it still keeps what arrived)."""
        self._abort()

    def released(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self._released:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._locks._forget(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:  # a waiter may have timed out
                d.callback(None)


class UploadLocks:
    """
    The leases of all uploads being written to, in this process.

    @param stale_after: seconds without progress after which a holder may be
        displaced.
    @param wait: how long a newcomer waits for the holder before 423.
    """

    def __init__(self, clock: IReactorTime, stale_after: float, wait: float) -> None:
        self.clock = clock
        self.stale_after = stale_after
        self.wait = wait
        self._leases: dict[str, Lease] = {}

    def holder(self, upload_id: str) -> Lease | None:
        return self._leases.get(upload_id)

    def __len__(self) -> int:
        return len(self._leases)

    def active(self) -> list[Lease]:
        return list(self._leases.values())

    async def acquire(
        self, upload_id: str, abort: Callable[[], None], take_over: bool = False
    ) -> Lease:
        """
        The lease on C{upload_id} for a new request whose connection
        C{abort} closes.  C{take_over} displaces any holder at once (used by
        termination).  Raises L{TusError} 423 when a live holder keeps it.
        """
        deadline = self.clock.seconds() + self.wait
        while (current := self._leases.get(upload_id)) is not None:
            if take_over or current.idle >= self.stale_after:
                current.abort()
                await _within(self.clock, current.released(), max(self.wait, 1.0))
                continue
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                raise TusError(423, "another request is writing to this upload; retry shortly",
                               {"Retry-After": "1"})
            await deferLater(self.clock, min(_POLL, remaining), lambda: None)
        lease = Lease(self, upload_id, abort)
        self._leases[upload_id] = lease
        return lease

    def _forget(self, lease: Lease) -> None:
        if self._leases.get(lease.upload_id) is lease:
            del self._leases[lease.upload_id]


async def _within(clock: IReactorTime, d: Deferred[None], seconds: float) -> None:
    """Wait for C{d}, at most C{seconds}; 423 if the old holder does not let go."""
    d.addTimeout(seconds, clock)
    try:
        await d
    except Exception:
        raise TusError(423, "the previous request for this upload has not stopped yet; retry",
                       {"Retry-After": "1"}) from None
