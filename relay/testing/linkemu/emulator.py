"""
The link emulator: a TCP proxy that makes loopback behave like the long,
lossy link between relay's edge and the cloud.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from .bucket import SharedBucket
from .connection import CLIENT, EmulatedConnection, _Side
from .profile import LinkCounters, LinkProfile

log = Logger()


class _LinkFactory(Factory):
    noisy = False

    def logPrefix(self) -> str:
        return "linkemu"

    def __init__(self, emulator: LinkEmulator) -> None:
        self._emulator = emulator

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._emulator._accept(addr)


class LinkEmulator:
    """
    A TCP proxy between a listening endpoint and an upstream endpoint that
    adds latency, jitter, bandwidth caps (per connection and for the whole
    link), resets and silent stalls, as described by a L{LinkProfile} that
    may be changed at any time.

    @param reactor: provides time and the networking the endpoint strings need.
    @param listen: server endpoint string, e.g. C{"tcp:0:interface=127.0.0.1"}.
    @param connect: client endpoint string of the upstream, e.g.
        C{"tcp:127.0.0.1:5672"}.
    @param profile: the initial behaviour (default: a perfect link).
    @param rng: source of every random choice (jitter, fault times); pass a
        seeded C{random.Random} for reproducible runs.
    @param shares_link_with: another emulator whose whole-link cap this one
        shares (its profile's C{aggregate_bytes_per_s} rules): two proxies
        to different servers, one bottleneck, as the edge's S3 parts and
        its AMQP link share the international link.

    @ivar counters: a L{LinkCounters}, updated as traffic flows.
    """

    def __init__(
        self,
        reactor: Any,
        listen: str,
        connect: str,
        profile: LinkProfile | None = None,
        rng: random.Random | None = None,
        shares_link_with: LinkEmulator | None = None,
    ) -> None:
        self.clock: IReactorTime = reactor
        self.rng = rng if rng is not None else random.Random()
        self.counters = LinkCounters()
        self.listen_description = listen
        self.connect_description = connect
        self._profile = profile if profile is not None else LinkProfile()
        self._listen_endpoint = serverFromString(reactor, listen)
        self._upstream_endpoint = clientFromString(reactor, connect)
        self._shared_to_upstream: SharedBucket
        self._shared_to_client: SharedBucket
        if shares_link_with is not None:
            self._shared_to_upstream = shares_link_with._shared_to_upstream
            self._shared_to_client = shares_link_with._shared_to_client
        else:
            aggregate = self._profile.aggregate_bytes_per_s
            self._shared_to_upstream = SharedBucket(reactor, aggregate)
            self._shared_to_client = SharedBucket(reactor, aggregate)
        self._connections: dict[int, EmulatedConnection] = {}
        self._next_number = 1
        self._port: IListeningPort | None = None
        self._link_stalled = False
        self._link_stall_end: IDelayedCall | None = None

    # Lifecycle

    async def start(self) -> IListeningPort:
        """Start listening; returns the listening port."""
        port = await self._listen_endpoint.listen(_LinkFactory(self))
        self._port = port
        log.info(
            "linkemu listening on {address}, upstream {upstream}",
            address=port.getHost(),
            upstream=self.connect_description,
        )
        return port

    @property
    def port(self) -> int:
        """The TCP port number listened on (useful with C{tcp:0})."""
        if self._port is None:
            raise RuntimeError("LinkEmulator.start() has not completed")
        return int(self._port.getHost().port)  # type: ignore[attr-defined]

    async def close_listener(self) -> None:
        """Stop accepting connections; connections already open carry on."""
        port, self._port = self._port, None
        if port is not None:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped

    async def stop(self) -> None:
        """Close the listener, abort every connection and wait until all are gone."""
        await self.close_listener()
        self._end_link_stall()
        connections = list(self._connections.values())
        waits = [connection.when_closed() for connection in connections]
        for connection in connections:
            connection._abort(counted=False)
        await gatherResults(waits)

    # Behaviour

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    @property
    def shared_to_upstream(self) -> SharedBucket:
        return self._shared_to_upstream

    @property
    def shared_to_client(self) -> SharedBucket:
        return self._shared_to_client

    @property
    def upstream_endpoint(self) -> IStreamClientEndpoint:
        return self._upstream_endpoint

    def set_profile(self, profile: LinkProfile) -> None:
        """Apply a new profile to the link and to every open connection."""
        old, self._profile = self._profile, profile
        self._shared_to_upstream.set_rate(profile.aggregate_bytes_per_s)
        self._shared_to_client.set_rate(profile.aggregate_bytes_per_s)
        for connection in list(self._connections.values()):
            connection.apply_profile(old, profile)
        log.info("linkemu profile now {profile}", profile=profile)

    def update(self, **changes: Any) -> LinkProfile:
        """Change some fields of the profile (see L{set_profile}); returns the new one."""
        profile = self._profile.replace(**changes)
        self.set_profile(profile)
        return profile

    # On-demand faults

    @property
    def link_stalled(self) -> bool:
        """Whether a link-wide stall (L{stall_all}) is in force."""
        return self._link_stalled

    def reset_all(self) -> int:
        """Reset every open connection; returns how many were reset."""
        count = sum(connection.reset() for connection in list(self._connections.values()))
        log.info("linkemu reset {count} connections", count=count)
        return count

    def stall_all(self, duration_s: float | None = None) -> int:
        """
        Blackhole the whole link, for C{duration_s} or until L{resume}: open
        connections freeze, and connections accepted meanwhile carry nothing.
        Returns how many open connections were frozen.
        """
        self._end_link_stall()
        self._link_stalled = True
        if duration_s is not None:
            self._link_stall_end = self.clock.callLater(duration_s, self._link_stall_over)
        connections = list(self._connections.values())
        self.counters.stalls_injected += len(connections)
        for connection in connections:
            connection.apply_stall()
        log.info(
            "linkemu link stalled {how} ({count} connections)",
            how="until resumed" if duration_s is None else f"for {duration_s} s",
            count=len(connections),
        )
        return len(connections)

    def resume(self) -> int:
        """End the link-wide stall and every connection's stall; returns open connections."""
        self._end_link_stall()
        self._link_stalled = False
        connections = list(self._connections.values())
        for connection in connections:
            connection.resume()
        log.info("linkemu link resumed")
        return len(connections)

    # State for tests

    @property
    def connections(self) -> tuple[EmulatedConnection, ...]:
        """Open connections, oldest first."""
        return tuple(self._connections.values())

    @property
    def buffered_bytes(self) -> int:
        """Bytes queued inside the emulator now, over all connections."""
        return sum(connection.buffered_bytes for connection in self._connections.values())

    # Internals

    def _accept(self, addr: Any) -> Protocol:
        number = self._next_number
        self._next_number += 1
        self.counters.connections_accepted += 1
        peer = f"{getattr(addr, 'host', addr)}:{getattr(addr, 'port', '')}"
        connection = EmulatedConnection(self, number, peer)
        self._connections[number] = connection
        log.info("linkemu connection {number} accepted from {peer}", number=number, peer=peer)
        return _Side(connection, CLIENT)

    def forget(self, connection: object) -> None:
        assert isinstance(connection, EmulatedConnection)
        self._connections.pop(connection.number, None)
        log.info("linkemu connection {number} closed", number=connection.number)

    def note_queued(self, amount: int) -> None:
        if amount > self.counters.peak_buffered_bytes:
            self.counters.peak_buffered_bytes = amount

    def _link_stall_over(self) -> None:
        self._link_stall_end = None
        self._link_stalled = False
        for connection in list(self._connections.values()):
            connection.apply_stall()
        log.info("linkemu link stall over")

    def _end_link_stall(self) -> None:
        call, self._link_stall_end = self._link_stall_end, None
        if call is not None and call.active():
            call.cancel()
