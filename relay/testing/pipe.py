"""
Connections in memory, for driving a server's protocols on a
L{relay.testing.reactor.TestReactor} with no socket (after
C{twisted.test.iosim}, which this builds on).

Unlike C{iosim}'s pump, a L{Pipe} behaves like TCP where the tests of a
streaming receiver need it to: a side that pauses reading
(C{pauseProducing}) gets nothing until it resumes, each read delivers at
most the reading transport's C{bufferSize} bytes, and an aborted side's
unsent bytes are dropped.  L{settle} moves bytes and runs the reactor's
due calls until nothing moves: what a real reactor would do in the same
instant.  L{PipeAgent} is an C{IAgent} over pipes to a C{Site}, for
C{treq}'s client.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionAborted
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from relay.testing.reactor import TestReactor

_ports = itertools.count(40000)


class PipeEnd(FakeTransport):
    """
    One end's transport.  C{bufferSize} is what one read delivers to its
    protocol (a protocol may raise it, as on a TCP transport).
    """

    bufferSize = 64 * 1024
    reading = True

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def abortConnection(self) -> None:
        self.stream = []
        self.disconnectReason = ConnectionAborted()  # type: ignore[assignment]
        self.disconnecting = True


class Pipe:
    """
    A server protocol and a client protocol joined in memory.
    """

    def __init__(self, server: IProtocol, client: IProtocol) -> None:
        port = next(_ports)
        server_address = IPv4Address("TCP", "127.0.0.1", 8080)
        client_address = IPv4Address("TCP", "127.0.0.1", port)
        self.server = PipeEnd(server, isServer=True, hostAddress=server_address, peerAddress=client_address)
        self.client = PipeEnd(client, isServer=False, hostAddress=client_address, peerAddress=server_address)
        self._pending = {id(self.server): bytearray(), id(self.client): bytearray()}
        server.makeConnection(self.server)
        client.makeConnection(self.client)

    @property
    def closed(self) -> bool:
        return bool(self.server.disconnected and self.client.disconnected)

    def step(self) -> bool:
        """
        One read each way and any close that is due; whether anything moved.
        """
        moved = False
        for source, target in ((self.client, self.server), (self.server, self.client)):
            pending = self._pending[id(source)]
            if source.disconnecting and source.disconnectReason.__class__ is ConnectionAborted:
                pending.clear()
            out = source.getOutBuffer()
            if out:
                pending += out
            source._checkProducer()
            if pending and target.reading and not target.disconnected:
                data = bytes(pending[: target.bufferSize])
                del pending[: len(data)]
                target.protocol.dataReceived(data)
                moved = True
        for end, other in ((self.server, self.client), (self.client, self.server)):
            if end.disconnecting and not end.disconnected and not self._pending[id(end)] and not end.stream:
                end.disconnected = other.disconnected = True
                other.disconnecting = True
                other.disconnectReason = end.disconnectReason
                other.reportDisconnect()
                end.reportDisconnect()
                moved = True
        return moved


def settle(reactor: TestReactor, pipes: Iterable[Pipe], *, tick: float = 0.0, limit: int = 1_000_000) -> None:
    """
    Move bytes through C{pipes} and run the reactor's calls due now until
    nothing moves.  Time does not pass (advance the reactor for that),
    unless C{tick} is given: then each round that moves bytes takes that
    many seconds, as on a link of that speed.
    """
    for _ in range(limit):
        moved = False
        for pipe in list(pipes):
            moved = pipe.step() or moved
        if moved and tick:
            reactor.advance(tick)
            continue
        due = [call for call in reactor.getDelayedCalls() if call.active() and call.getTime() <= reactor.seconds()]
        if due:
            reactor.advance(0)
        if not moved and not due:
            return
    raise AssertionError(f"the pipes did not settle in {limit} rounds")


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    Every URI's endpoint is a TCP connection on the memory reactor (which
    L{PipeAgent} then joins to its server).
    """

    def __init__(self, memory: MemoryReactorClock) -> None:
        self._memory = memory

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:  # noqa: N802
        return TCP4ClientEndpoint(self._memory, "127.0.0.1", uri.port)


@implementer(IAgent)
class PipeAgent:
    """
    An C{IAgent} whose every connection is a new L{Pipe} to C{factory}'s
    protocol (a C{Site}); the pipes are kept in C{pipes} for L{settle}.
    """

    def __init__(self, factory: IProtocolFactory, pipes: list[Pipe]) -> None:
        self._factory = factory
        self._pipes = pipes
        self._memory = MemoryReactorClock()
        self._agent = Agent.usingEndpointFactory(self._memory, _Endpoints(self._memory))

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: IBodyProducer | None = None
    ) -> Any:
        response = self._agent.request(method, uri, headers, bodyProducer)
        if self._memory.tcpClients:
            _, _, factory, _, _ = self._memory.tcpClients.pop()
            client = factory.buildProtocol(None)
            server = self._factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
            assert client is not None and server is not None
            self._pipes.append(Pipe(server, client))
        return response
