"""A tiny TCP proxy for link tests that can blackhole traffic without closing.

Private to these tests (relay/testing/linkemu.py is the full link emulator).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure


class _Pipe(Protocol):
    transport: Any

    def __init__(self, proxy: StallProxy) -> None:
        self.proxy = proxy
        self.peer: _Pipe | None = None
        self.stalled = False
        self.pending: list[bytes] = []
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.stalled:
            return  # blackholed: swallowed, the connection stays open
        if self.peer is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.proxy.pipes.discard(self)
        # A stalled link tells nobody anything, not even that the far side left.
        if self.peer is not None and self.peer.transport is not None and not self.stalled:
            self.peer.transport.loseConnection()
        self.closed.callback(None)


class _Downstream(_Pipe):
    """The side the client connected to; it dials the broker."""

    def connectionMade(self) -> None:
        self.proxy.pipes.add(self)
        self.transport.pauseProducing()
        upstream = _Pipe(self.proxy)
        self.proxy.pipes.add(upstream)

        def connected(pipe: _Pipe) -> None:
            pipe.peer, self.peer = self, pipe
            for data in self.pending:
                pipe.transport.write(data)
            self.pending = []
            self.transport.resumeProducing()

        def failed(reason: Failure) -> None:
            self.proxy.pipes.discard(upstream)
            upstream.closed.callback(None)
            self.transport.loseConnection()

        TCP4ClientEndpoint(reactor, *self.proxy.target).connect(
            Factory.forProtocol(lambda: upstream)
        ).addCallbacks(connected, failed)


class StallProxy:
    """Listens on 127.0.0.1:<port> and forwards to ``target`` until :meth:`stall`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.pipes: set[_Pipe] = set()
        self.port: IListeningPort | None = None

    async def start(self) -> int:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(Factory.forProtocol(lambda: _Downstream(self)))
        return int(self.port.getHost().port)  # type: ignore[union-attr]

    def stall(self) -> None:
        """Blackhole every open connection, both ways; new connections still flow."""
        for pipe in self.pipes:
            pipe.stalled = True

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()  # type: ignore[misc]
        pipes = list(self.pipes)
        for pipe in pipes:
            pipe.stalled = False
            if pipe.transport is not None:
                pipe.transport.abortConnection()
        for pipe in pipes:
            await pipe.closed
