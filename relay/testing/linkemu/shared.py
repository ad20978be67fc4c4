"""
What one emulated connection shares with the rest of the emulated link
(L{relay.testing.linkemu.emulator.LinkEmulator} provides it): the clock and
randomness, the counters, the profile and the link-wide stall, the
aggregate buckets of both directions, the upstream endpoint.  A protocol of
its own, so that the connection need not import the emulator that imports
it.
"""

from __future__ import annotations

import random
from typing import Protocol

from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from .bucket import SharedBucket
from .profile import LinkCounters, LinkProfile


class EmulatedLink(Protocol):
    """
    The link as its connections see it.
    """

    clock: IReactorTime
    rng: random.Random
    counters: LinkCounters

    @property
    def profile(self) -> LinkProfile:
        """The link's profile now (it may change while connections run)."""

    @property
    def link_stalled(self) -> bool:
        """Whether the whole link holds its traffic now."""

    @property
    def shared_to_upstream(self) -> SharedBucket:
        """The aggregate bucket of the client-to-upstream direction."""

    @property
    def shared_to_client(self) -> SharedBucket:
        """The aggregate bucket of the upstream-to-client direction."""

    @property
    def upstream_endpoint(self) -> IStreamClientEndpoint:
        """Where a connection's upstream side connects."""

    def note_queued(self, amount: int) -> None:
        """A direction holds C{amount} bytes now (for the peak counter)."""

    def forget(self, connection: object) -> None:
        """A connection is gone for good."""
