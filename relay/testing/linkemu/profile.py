"""
What the emulated link does to traffic (L{LinkProfile}) and what it has done
so far (L{LinkCounters}).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Default per-direction, per-connection buffer: enough for 150 ms of latency
#: at about 7 MB/s, small enough that a slow receiver costs little memory.
DEFAULT_BUFFER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class LinkProfile:
    """
    The behaviour of an emulated link, applied to each connection through it.

    Rates are in bytes per second; C{None} means unlimited. Means are the
    means of exponential inter-arrival times, in seconds; C{None} disables
    the fault.

    @ivar latency_ms: one-way delay added to every chunk, in each direction
        (a round trip therefore gains twice this).
    @ivar jitter_ms: extra one-way delay drawn uniformly from
        C{[0, jitter_ms]} per chunk; byte order is always preserved.
    @ivar rate_bytes_per_s: bandwidth cap of each connection, each direction.
    @ivar aggregate_bytes_per_s: bandwidth cap of the whole link, each
        direction, shared by all connections.
    @ivar reset_mean_s: mean time between injected resets of a connection.
    @ivar stall_mean_s: mean time between injected silent stalls of a
        connection (counted from the end of the previous stall).
    @ivar stall_duration_s: how long an injected random stall lasts.
    @ivar buffer_bytes: high-water mark of the emulator's queue, per
        connection and direction; above it the emulator stops reading.
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_bytes_per_s: float | None = None
    aggregate_bytes_per_s: float | None = None
    reset_mean_s: float | None = None
    stall_mean_s: float | None = None
    stall_duration_s: float = 5.0
    buffer_bytes: int = DEFAULT_BUFFER_BYTES

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "stall_duration_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"LinkProfile.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("rate_bytes_per_s", "aggregate_bytes_per_s", "reset_mean_s", "stall_mean_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(
                    f"LinkProfile.{name} must be > 0 or None (disabled), got {value!r}"
                )
        if self.buffer_bytes < 1:
            raise ValueError(f"LinkProfile.buffer_bytes must be >= 1, got {self.buffer_bytes!r}")

    @property
    def latency_s(self) -> float:
        """One-way latency in seconds."""
        return self.latency_ms / 1000.0

    @property
    def jitter_s(self) -> float:
        """Maximum extra one-way jitter in seconds."""
        return self.jitter_ms / 1000.0

    def replace(self, **changes: Any) -> LinkProfile:
        """A copy of this profile with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass
class LinkCounters:
    """
    What an emulated link has done since it started. Read it from tests; the
    emulator is the only writer.

    @ivar connections_accepted: client connections accepted.
    @ivar connect_failures: accepted connections whose upstream connection
        failed (the client is then reset).
    @ivar resets_injected: connections reset by the emulator (at the profile's
        rate or by C{reset_all}/L{EmulatedConnection.reset}).
    @ivar stalls_injected: stall episodes begun: one per connection frozen by
        C{stall_all}, plus one per random or per-connection stall.
    @ivar bytes_to_upstream: bytes delivered from clients to the upstream.
    @ivar bytes_to_client: bytes delivered from the upstream to clients.
    @ivar peak_buffered_bytes: the most bytes ever queued inside the emulator
        for one direction of one connection.
    """

    connections_accepted: int = 0
    connect_failures: int = 0
    resets_injected: int = 0
    stalls_injected: int = 0
    bytes_to_upstream: int = 0
    bytes_to_client: int = 0
    peak_buffered_bytes: int = 0

    def snapshot(self) -> LinkCounters:
        """A copy that later traffic does not change."""
        return dataclasses.replace(self)
