"""
Tests for relay.testing.linkemu: unit tests of the token bucket and the delay
line against a Clock, then the whole proxy on loopback with the real reactor.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, gatherResults
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from relay.testing.linkemu import (
    DelayLine,
    LinkEmulator,
    LinkProfile,
    SharedBucket,
    TokenBucket,
)
from relay.testing.linkemu.bucket import MAX_SLICE_BYTES
from relay.testing.linkemu.cli import build_parser, profile_from_args

KIB = 1024
MIB = 1024 * KIB
LOOPBACK = "tcp:0:interface=127.0.0.1"
REPO = Path(__file__).resolve().parents[2]


# Unit level: token bucket and delay line against a Clock


class TokenBucketTests(SynchronousTestCase):
    def drain(self, bucket: TokenBucket, clock: Clock, seconds: float, step: int = 100) -> int:
        """Send as fast as the bucket allows for C{seconds}; return bytes sent."""
        sent = 0
        end = clock.seconds() + seconds
        while clock.seconds() < end:
            if bucket.wait_time() == 0:
                bucket.consume(step)
                sent += step
            else:
                clock.advance(min(bucket.wait_time(), end - clock.seconds()))
        return sent

    def test_unlimited_never_waits(self) -> None:
        clock = Clock()
        bucket = TokenBucket(clock, None)
        bucket.consume(10 * MIB)
        self.assertEqual(bucket.wait_time(), 0)
        self.assertIsNone(bucket.slice_bytes)

    def test_rate_bounds_bytes_over_time(self) -> None:
        clock = Clock()
        bucket = TokenBucket(clock, 10_000)
        sent = self.drain(bucket, clock, 10.0)
        # At most capacity + rate * t + one send; at least rate * t - one send.
        self.assertLessEqual(sent, bucket.capacity + 100_000 + 100)
        self.assertGreaterEqual(sent, 100_000 - 100)

    def test_debt_sets_wait_time(self) -> None:
        clock = Clock()
        bucket = TokenBucket(clock, 1000)
        bucket.consume(int(bucket.capacity) + 500)
        self.assertAlmostEqual(bucket.wait_time(), 0.5)
        clock.advance(0.5)
        self.assertEqual(bucket.wait_time(), 0)

    def test_idle_credit_is_capped(self) -> None:
        clock = Clock()
        bucket = TokenBucket(clock, 1000)
        clock.advance(3600)
        bucket.consume(int(bucket.capacity) + 1000)
        self.assertAlmostEqual(bucket.wait_time(), 1.0)

    def test_set_rate(self) -> None:
        clock = Clock()
        bucket = TokenBucket(clock, 1000)
        sent = self.drain(bucket, clock, 10.0)
        self.assertTrue(10_000 - 100 <= sent <= 10_000 + bucket.capacity + 100, sent)
        bucket.set_rate(4000)
        sent = self.drain(bucket, clock, 10.0)
        self.assertTrue(40_000 - 100 <= sent <= 40_000 + bucket.capacity + 100, sent)
        bucket.set_rate(None)
        self.assertEqual(bucket.wait_time(), 0)

    def test_slices_follow_rate(self) -> None:
        clock = Clock()
        self.assertEqual(TokenBucket(clock, 1).slice_bytes, 512)
        self.assertEqual(TokenBucket(clock, 100_000).slice_bytes, 2000)
        self.assertEqual(TokenBucket(clock, 1e12).slice_bytes, MAX_SLICE_BYTES)


class HalfCloseableStringTransport(StringTransport):
    half_closed = False

    def loseWriteConnection(self) -> None:
        self.half_closed = True


class DelayLineTests(SynchronousTestCase):
    def make(self, **profile: Any) -> tuple[DelayLine, StringTransport, Any, Clock]:
        clock = Clock()
        line = DelayLine(clock, LinkProfile(**profile), random.Random(7), SharedBucket(clock, None))
        source = StringTransport()
        sink = HalfCloseableStringTransport()
        line.attach_source(source)
        line.attach_sink(sink)
        return line, source, sink, clock

    def test_latency(self) -> None:
        line, _, sink, clock = self.make(latency_ms=100)
        line.receive(b"abc")
        clock.advance(0.099)
        self.assertEqual(sink.value(), b"")
        clock.advance(0.001)
        self.assertEqual(sink.value(), b"abc")

    def test_no_latency_delivers_at_once(self) -> None:
        line, _, sink, _ = self.make()
        line.receive(b"abc")
        self.assertEqual(sink.value(), b"abc")

    def test_jitter_keeps_order(self) -> None:
        line, _, sink, clock = self.make(latency_ms=10, jitter_ms=50)
        chunks = [bytes([i]) * (i + 1) for i in range(100)]
        for chunk in chunks:
            line.receive(chunk)
            clock.advance(0.001)
        clock.advance(0.001)
        self.assertNotEqual(sink.value(), b"".join(chunks))
        clock.advance(1)
        self.assertEqual(sink.value(), b"".join(chunks))

    def test_rate_paces_delivery(self) -> None:
        line, _, sink, clock = self.make(rate_bytes_per_s=10_000)
        line.receive(b"x" * 50_000)
        clock.pump([0.01] * 200)
        delivered = len(sink.value())
        self.assertGreaterEqual(delivered, 20_000 - 512)
        self.assertLessEqual(delivered, 20_000 + 512 + 512)
        clock.pump([0.01] * 400)
        self.assertEqual(len(sink.value()), 50_000)

    def test_shared_bucket_caps_lines_together(self) -> None:
        clock = Clock()
        shared = SharedBucket(clock, 10_000)
        sinks = []
        for _ in range(2):
            line = DelayLine(clock, LinkProfile(), random.Random(1), shared)
            sink = StringTransport()
            line.attach_sink(sink)
            line.receive(b"y" * 50_000)
            sinks.append(sink)
        clock.pump([0.01] * 200)
        delivered = [len(sink.value()) for sink in sinks]
        self.assertLessEqual(sum(delivered), 20_000 + 512 + 2 * 512)
        self.assertGreaterEqual(sum(delivered), 20_000 - 2 * 512)
        self.assertTrue(all(d > 0 for d in delivered), delivered)

    def test_high_water_pauses_source(self) -> None:
        line, source, sink, _ = self.make(buffer_bytes=1000)
        line.pauseProducing()  # the sink's buffer is full
        line.receive(b"a" * 600)
        self.assertEqual(source.producerState, "producing")
        line.receive(b"b" * 600)
        self.assertEqual(source.producerState, "paused")
        self.assertEqual(line.queued_bytes, 1200)
        self.assertEqual(line.peak_bytes, 1200)
        line.resumeProducing()  # the sink drained
        self.assertEqual(sink.value(), b"a" * 600 + b"b" * 600)
        self.assertEqual(source.producerState, "producing")

    def test_stall_holds_bytes_and_reading(self) -> None:
        line, source, sink, clock = self.make(latency_ms=10)
        line.set_stalled(True)
        self.assertEqual(source.producerState, "paused")
        line.receive(b"held")
        clock.advance(60)
        self.assertEqual(sink.value(), b"")
        line.set_stalled(False)
        self.assertEqual(sink.value(), b"held")
        self.assertEqual(source.producerState, "producing")

    def test_end_of_stream_follows_data(self) -> None:
        line, _, sink, clock = self.make(latency_ms=50)
        line.receive(b"last words")
        line.source_ended()
        clock.advance(0.049)
        self.assertFalse(sink.half_closed)
        clock.advance(0.001)
        self.assertEqual(sink.value(), b"last words")
        self.assertTrue(sink.half_closed)
        self.assertFalse(sink.disconnecting)
        self.assertIsNone(sink.producer)

    def test_full_close(self) -> None:
        line, _, sink, clock = self.make(latency_ms=50)
        line.receive(b"bye")
        line.finish(full_close=True)
        clock.advance(0.05)
        self.assertEqual(sink.value(), b"bye")
        self.assertTrue(sink.disconnecting)

    def test_profile_change_applies_to_queued_bytes(self) -> None:
        line, _, sink, clock = self.make(rate_bytes_per_s=1000)
        line.receive(b"z" * 100_000)
        clock.advance(1)
        self.assertLess(len(sink.value()), 10_000)
        line.apply_profile(LinkProfile())
        self.assertEqual(len(sink.value()), 100_000)

    def test_discard_stops_everything(self) -> None:
        line, _, sink, clock = self.make(latency_ms=50)
        line.receive(b"lost")
        line.discard()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(1)
        self.assertEqual(sink.value(), b"")
        self.assertEqual(line.queued_bytes, 0)


class ProfileAndCommandLineTests(SynchronousTestCase):
    def test_invalid_profile(self) -> None:
        self.assertRaises(ValueError, LinkProfile, latency_ms=-1)
        self.assertRaises(ValueError, LinkProfile, rate_bytes_per_s=0)
        self.assertRaises(ValueError, LinkProfile, buffer_bytes=0)

    def test_arguments_to_profile(self) -> None:
        args = build_parser().parse_args(
            "--listen tcp:9000:interface=127.0.0.1 --connect tcp:127.0.0.1:5672 "
            "--latency-ms 150 --rate-kbps 512 --aggregate-kbps 8000 "
            "--reset-mean-s 20 --stall-mean-s 0".split()
        )
        self.assertEqual(
            profile_from_args(args),
            LinkProfile(
                latency_ms=150,
                rate_bytes_per_s=64_000,
                aggregate_bytes_per_s=1_000_000,
                reset_mean_s=20,
                stall_mean_s=None,
            ),
        )


# Integration level: real sockets on loopback


@implementer(IHalfCloseableProtocol)
class Peer(Protocol):
    """
    One end of a test conversation: writes C{payload} when connected, hashes
    what it receives, optionally echoes it or holds its reading.
    """

    def __init__(
        self, payload: bytes = b"", echo: bool = False, paused: bool = False,
        reply_on_eof: bytes | None = None,
    ) -> None:
        self.payload = payload
        self.echo = echo
        self.paused = paused
        self.reply_on_eof = reply_on_eof
        self.received = 0
        self.digest = hashlib.sha256()
        self.eof = False
        self.reason: Failure | None = None
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._lost_waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        if self.paused:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        if self.payload:
            self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.digest.update(data)
        if self.echo:
            self.transport.write(data)  # type: ignore[union-attr]
        ready = [w for w in self._waiters if self.received >= w[0]]
        self._waiters = [w for w in self._waiters if self.received < w[0]]
        for _, d in ready:
            d.callback(None)

    def readConnectionLost(self) -> None:
        self.eof = True
        if self.reply_on_eof is not None:
            self.transport.write(self.reply_on_eof)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.reason = reason
        waiters, self._waiters = self._waiters, []
        for _, d in waiters:
            d.errback(reason)
        lost, self._lost_waiters = self._lost_waiters, []
        for d in lost:
            d.callback(None)

    def wait_for(self, count: int) -> Deferred[None]:
        """Fires once C{count} bytes in total have arrived."""
        d: Deferred[None] = Deferred()
        if self.received >= count:
            d.callback(None)
        elif self.reason is not None:
            d.errback(self.reason)
        else:
            self._waiters.append((count, d))
        return d

    async def when_lost(self) -> BaseException:
        """Waits until the connection is gone; returns why (an exception)."""
        if self.reason is None:
            d: Deferred[None] = Deferred()
            self._lost_waiters.append(d)
            await d
        assert self.reason is not None and self.reason.value is not None
        return self.reason.value

    def abort(self) -> None:
        if self.transport is not None and self.reason is None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


class PeerServer(Factory):
    noisy = False

    def __init__(self, make: Callable[[], Peer]) -> None:
        self.make = make
        self.accepted: DeferredQueue[Peer] = DeferredQueue()
        self.peers: list[Peer] = []

    def buildProtocol(self, addr: Any) -> Peer:
        peer = self.make()
        self.peers.append(peer)
        self.accepted.put(peer)
        return peer


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


def now() -> float:
    return reactor.seconds()  # type: ignore[attr-defined,no-any-return]


class LinkTestCase(TestCase):
    timeout = 30

    async def start_link(
        self,
        profile: LinkProfile,
        server_peer: Callable[[], Peer] = Peer,
        upstream: str | None = None,
    ) -> LinkEmulator:
        """Start a server of C{server_peer}s and an emulator in front of it."""
        self.server = PeerServer(server_peer)
        self.clients: list[Peer] = []
        port = await serverFromString(reactor, LOOPBACK).listen(self.server)
        self.emulator = LinkEmulator(
            reactor,
            listen=LOOPBACK,
            connect=upstream or f"tcp:127.0.0.1:{port.getHost().port}",  # type: ignore[attr-defined]
            profile=profile,
            rng=random.Random(20260601),
        )
        await self.emulator.start()
        self.addCleanup(self.stop_link, port)
        return self.emulator

    async def stop_link(self, port: Any) -> None:
        peers = self.clients + self.server.peers
        for peer in self.clients:
            peer.abort()
        await self.emulator.stop()
        for peer in self.server.peers:
            peer.abort()
        await gatherResults([Deferred.fromCoroutine(peer.when_lost()) for peer in peers])
        await port.stopListening()

    async def connect(self, peer: Peer | None = None) -> Peer:
        endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{self.emulator.port}")
        client = await connectProtocol(endpoint, peer if peer is not None else Peer())
        self.clients.append(client)
        return client

    async def round_trip(self, client: Peer, message: bytes = b"ping") -> float:
        """Seconds for C{message} to come back from an echoing server."""
        started = now()
        expected = client.received + len(message)
        client.transport.write(message)  # type: ignore[union-attr]
        await client.wait_for(expected)
        return now() - started


class RelayTests(LinkTestCase):
    async def check_intact(self, profile: LinkProfile, size: int) -> None:
        up, down = payload(size, 1), payload(size, 2)
        emulator = await self.start_link(profile, lambda: Peer(payload=down))
        client = await self.connect(Peer(payload=up))
        server = await self.server.accepted.get()
        await gatherResults([client.wait_for(size), server.wait_for(size)])
        self.assertEqual(server.digest.digest(), sha(up))
        self.assertEqual(client.digest.digest(), sha(down))
        self.assertEqual(emulator.counters.bytes_to_upstream, size)
        self.assertEqual(emulator.counters.bytes_to_client, size)
        self.assertEqual(emulator.counters.connections_accepted, 1)

    async def test_bytes_intact_both_ways(self) -> None:
        await self.check_intact(LinkProfile(), 4 * MIB)

    async def test_bytes_intact_through_a_bad_link(self) -> None:
        profile = LinkProfile(
            latency_ms=20, jitter_ms=20, rate_bytes_per_s=4 * MIB,
            aggregate_bytes_per_s=6 * MIB, stall_mean_s=0.1, stall_duration_s=0.05,
            buffer_bytes=64 * KIB,
        )
        await self.check_intact(profile, 1 * MIB)
        self.assertGreaterEqual(self.emulator.counters.stalls_injected, 1)

    async def test_close_and_half_close_travel_after_data(self) -> None:
        await self.start_link(LinkProfile(latency_ms=30), lambda: Peer(reply_on_eof=b"bye"))
        client = await self.connect()
        client.transport.write(b"hello")  # type: ignore[union-attr]
        client.transport.loseWriteConnection()  # type: ignore[union-attr]
        server = await self.server.accepted.get()
        reason = await client.when_lost()
        self.assertIsInstance(reason, ConnectionDone)
        self.assertEqual(client.digest.digest(), sha(b"bye"))
        self.assertTrue(client.eof)
        server_reason = await server.when_lost()
        self.assertIsInstance(server_reason, ConnectionDone)
        self.assertEqual(server.digest.digest(), sha(b"hello"))

    async def test_unreachable_upstream_resets_client(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        await self.start_link(LinkProfile(), upstream=f"tcp:127.0.0.1:{closed_port}")
        client = await self.connect()
        reason = await client.when_lost()
        self.assertIsInstance(reason, ConnectionLost)
        self.assertEqual(self.emulator.counters.connect_failures, 1)

    async def test_close_listener_keeps_open_connections(self) -> None:
        await self.start_link(LinkProfile(), lambda: Peer(echo=True))
        client = await self.connect()
        await self.round_trip(client)
        port = self.emulator.port
        await self.emulator.close_listener()
        endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{port}")
        with self.assertRaises(ConnectionRefusedError):
            await connectProtocol(endpoint, Peer())
        await self.round_trip(client, b"still here")


class LatencyAndBandwidthTests(LinkTestCase):
    async def test_latency_adds_to_round_trip(self) -> None:
        await self.start_link(LinkProfile(latency_ms=150), lambda: Peer(echo=True))
        client = await self.connect()
        rtt = await self.round_trip(client)
        self.assertGreaterEqual(rtt, 0.29)
        self.assertLess(rtt, 2.0)
        self.emulator.update(latency_ms=0)
        self.assertLess(await self.round_trip(client), 0.25)

    async def test_connection_rate_cap(self) -> None:
        size = 512 * KIB
        emulator = await self.start_link(LinkProfile(rate_bytes_per_s=256 * KIB))
        started = now()
        await self.connect(Peer(payload=payload(size, 3)))
        server = await self.server.accepted.get()
        await server.wait_for(size)
        elapsed = now() - started
        self.assertGreaterEqual(elapsed, 1.8)
        self.assertLess(elapsed, 10)
        self.assertEqual(server.digest.digest(), sha(payload(size, 3)))
        self.assertEqual(emulator.counters.bytes_to_upstream, size)

    async def test_aggregate_cap_bounds_the_sum(self) -> None:
        size = 256 * KIB
        await self.start_link(LinkProfile(aggregate_bytes_per_s=256 * KIB))
        started = now()
        await self.connect(Peer(payload=payload(size, 4)))
        await self.connect(Peer(payload=payload(size, 5)))
        servers = [await self.server.accepted.get() for _ in range(2)]
        await gatherResults([server.wait_for(size) for server in servers])
        elapsed = now() - started
        self.assertGreaterEqual(elapsed, 1.8)
        self.assertLess(elapsed, 10)

    async def test_memory_bounded_when_receiver_is_slow(self) -> None:
        size = 32 * MIB
        bound = 64 * KIB
        data = payload(size, 6)
        emulator = await self.start_link(LinkProfile(buffer_bytes=bound), lambda: Peer(paused=True))
        await self.connect(Peer(payload=data))
        server = await self.server.accepted.get()
        (connection,) = emulator.connections
        # Kernel buffers absorb some megabytes; then the emulator, holding one
        # buffer plus at most one read, must stop reading from the client.
        deadline = now() + 10
        while not connection.to_upstream.source_paused and now() < deadline:
            await sleep(0.05)
        await sleep(0.2)
        self.assertTrue(connection.to_upstream.source_paused)
        self.assertEqual(server.received, 0)
        self.assertLess(emulator.counters.bytes_to_upstream, size)
        self.assertLessEqual(emulator.buffered_bytes, bound + 64 * KIB)
        server.transport.resumeProducing()  # type: ignore[union-attr]
        await server.wait_for(size)
        self.assertEqual(server.digest.digest(), sha(data))
        self.assertGreater(emulator.counters.peak_buffered_bytes, 0)
        self.assertLessEqual(emulator.counters.peak_buffered_bytes, bound + 64 * KIB)


class FaultTests(LinkTestCase):
    async def test_resets_at_rate(self) -> None:
        emulator = await self.start_link(LinkProfile(reset_mean_s=0.2))
        clients = [await self.connect() for _ in range(3)]
        reasons = [await client.when_lost() for client in clients]
        for reason in reasons:
            self.assertIsInstance(reason, ConnectionLost)
        self.assertEqual(emulator.counters.resets_injected, 3)
        self.assertEqual(emulator.connections, ())

    async def test_reset_all_resets_both_sides(self) -> None:
        emulator = await self.start_link(LinkProfile(latency_ms=10), lambda: Peer(echo=True))
        client = await self.connect()
        await self.round_trip(client)
        server = await self.server.accepted.get()
        self.assertEqual(emulator.reset_all(), 1)
        client_reason, server_reason = await gatherResults(
            [Deferred.fromCoroutine(client.when_lost()), Deferred.fromCoroutine(server.when_lost())]
        )
        self.assertIsInstance(client_reason, ConnectionLost)
        self.assertIsInstance(server_reason, ConnectionLost)
        self.assertEqual(emulator.counters.resets_injected, 1)

    async def test_stall_blackholes_without_closing(self) -> None:
        emulator = await self.start_link(LinkProfile(), lambda: Peer(echo=True))
        client = await self.connect()
        await self.round_trip(client)
        server = await self.server.accepted.get()
        self.assertEqual(emulator.stall_all(), 1)
        client.transport.write(b"x" * 1000)  # type: ignore[union-attr]
        late = await self.connect()
        late.transport.write(b"y" * 10)  # type: ignore[union-attr]
        await sleep(0.5)
        self.assertEqual((server.received, client.received, late.received), (4, 4, 0))
        self.assertIsNone(client.reason)
        self.assertIsNone(server.reason)
        self.assertIsNone(late.reason)
        self.assertEqual(emulator.counters.stalls_injected, 1)
        emulator.resume()
        await gatherResults([client.wait_for(1004), late.wait_for(10)])

    async def test_timed_stall_ends_by_itself(self) -> None:
        emulator = await self.start_link(LinkProfile(), lambda: Peer(echo=True))
        client = await self.connect()
        await self.round_trip(client)
        emulator.stall_all(0.4)
        self.assertGreaterEqual(await self.round_trip(client), 0.35)
        (connection,) = emulator.connections
        connection.stall(0.3)
        self.assertGreaterEqual(await self.round_trip(client), 0.25)
        self.assertEqual(emulator.counters.stalls_injected, 2)


class CommandLineTests(TestCase):
    timeout = 30

    async def test_bench_entry_point_relays(self) -> None:
        server = PeerServer(lambda: Peer(echo=True))
        upstream = await serverFromString(reactor, LOOPBACK).listen(server)
        self.addCleanup(upstream.stopListening)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            listen_port = probe.getsockname()[1]
        process = _Process()
        args = [
            sys.executable, str(REPO / "bench" / "linkemu.py"),
            "--listen", f"tcp:{listen_port}:interface=127.0.0.1",
            "--connect", f"tcp:127.0.0.1:{upstream.getHost().port}",  # type: ignore[attr-defined]
            "--latency-ms", "20", "--rate-kbps", "8000",
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        reactor.spawnProcess(process, sys.executable, args, env=env)  # type: ignore[attr-defined]
        try:
            await process.wait_for_output(b"linkemu listening")
            endpoint = clientFromString(reactor, f"tcp:127.0.0.1:{listen_port}")
            client = await connectProtocol(endpoint, Peer(echo=False))
            client.transport.write(b"through the emulator")  # type: ignore[union-attr]
            await client.wait_for(len(b"through the emulator"))
            client.transport.loseConnection()  # type: ignore[union-attr]
            await client.when_lost()
            for peer in server.peers:
                peer.abort()
                await peer.when_lost()
        finally:
            if process.ended is None:
                process.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await process.wait_ended()
        self.assertIn(b"linkemu connection 1 accepted", process.output)


class _Process(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Failure | None = None
        self._watch: tuple[bytes, Deferred[None]] | None = None
        self._ended_waiters: list[Deferred[None]] = []

    def errReceived(self, data: bytes) -> None:
        self.output += data
        if self._watch is not None and self._watch[0] in self.output:
            d = self._watch[1]
            self._watch = None
            d.callback(None)

    outReceived = errReceived

    def wait_for_output(self, marker: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._watch = (marker, d)
        self.errReceived(b"")
        return d

    def processEnded(self, reason: Failure) -> None:
        self.ended = reason
        if self._watch is not None:
            self._watch[1].errback(AssertionError(self.output.decode(errors="replace")))
            self._watch = None
        for d in self._ended_waiters:
            d.callback(None)

    def wait_ended(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.ended is not None:
            d.callback(None)
        else:
            self._ended_waiters.append(d)
        return d
