"""LinkService: URLs, reconnects, backoff on handshake failures, stalls, stop."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionAborted
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from txamqp.client import ChannelClosed
from zope.interface import implementer

from relay.link.backoff import Backoff
from relay.link.channel import Channel, LinkDown
from relay.link.client import HeartbeatTimeout
from relay.link.connection import BrokerAddress, LinkService, describe

from ._broker import (
    HOST,
    PORT,
    URL,
    BrokerTestCase,
    close_connections_named,
    open_channel,
    sleep,
    unique,
    wait_for,
    within,
)
from ._stallproxy import StallProxy
from .test_client_delegate import _frame


def _quick_backoff(**kwargs: Any) -> Backoff:
    kwargs.setdefault("initial", 0.05)
    kwargs.setdefault("cap", 0.2)
    kwargs.setdefault("jitter", "none")
    return Backoff(reactor, **kwargs)


class BrokerAddressTests(SynchronousTestCase):
    def test_full_url(self) -> None:
        address = BrokerAddress.parse("amqp://edge%2D1:p%40ss%3Aword@broker.example:5673/edge%2F1")
        self.assertEqual(
            address,
            BrokerAddress(False, "broker.example", 5673, "edge-1", "p@ss:word", "edge/1"),
        )
        self.assertNotIn("p@ss", repr(address))

    def test_defaults(self) -> None:
        self.assertEqual(
            BrokerAddress.parse("amqp://localhost"),
            BrokerAddress(False, "localhost", 5672, "guest", "guest", "/"),
        )
        self.assertEqual(BrokerAddress.parse("amqps://h/").port, 5671)
        self.assertEqual(BrokerAddress.parse("amqp://h/%2F").vhost, "/")
        self.assertTrue(BrokerAddress.parse("amqps://h/").tls)
        self.assertEqual(BrokerAddress.parse("amqp://[::1]:1234/v").host, "::1")

    def test_rejects(self) -> None:
        for bad in ("http://h/", "amqp:///vhost", "amqp://h/?heartbeat=5", "h:5672"):
            self.assertRaises(ValueError, BrokerAddress.parse, bad)


class LinkServiceUnitTests(SynchronousTestCase):
    def test_blocked_shows_in_health(self) -> None:
        service = LinkService(URL, reactor=MemoryReactorClock(), heartbeat=0)
        client = service._new_connection()
        client.makeConnection(StringTransport())
        client.dataReceived(_frame(0, "connection", "blocked", reason="disk alarm"))
        self.assertTrue(service.health.blocked)
        client.dataReceived(_frame(0, "connection", "unblocked"))
        self.assertFalse(service.health.blocked)

    def test_handshake_timeout(self) -> None:
        clock = MemoryReactorClock()
        service = LinkService(URL, reactor=clock, heartbeat=0, handshake_timeout=5)
        client = service._new_connection()
        transport = StringTransport()

        def abort() -> None:  # what a TCP transport does, minus the socket
            if not transport.disconnecting:
                transport.disconnecting = True
                client.connectionLost(Failure(ConnectionAborted()))

        transport.abortConnection = abort  # type: ignore[method-assign]
        client.makeConnection(transport)
        clock.advance(4.9)
        self.assertIsNone(service.health.last_error)
        clock.advance(0.2)
        self.assertEqual(service.health.last_error, "AMQP handshake timed out after 5s")
        self.assertEqual(clock.getDelayedCalls(), [])


class ReconnectTests(BrokerTestCase):
    timeout = 30

    async def test_broker_side_close_reconnects_and_redeclares(self) -> None:
        queue = self.queue_name("redeclare")
        connected: list[Channel] = []
        lost: list[Any] = []

        async def on_connected(channel: Channel) -> None:
            await channel.declare_quorum_queue(queue)
            connected.append(channel)

        name = unique("killed")
        service = self.service(
            on_connected=on_connected,
            on_disconnected=lost.append,
            connection_name=name,
            backoff=_quick_backoff(),
        )
        first = await within(service.whenConnected(), 10)
        # Remove the queue behind the link's back: only a re-declare restores it.
        raw = await open_channel(await self.raw())
        await within(raw.queue_delete(queue=queue), 5)

        self.assertEqual(await close_connections_named(name), 1)
        await wait_for(lambda: len(connected) == 2, timeout=10)

        self.assertEqual(len(lost), 1)
        self.assertFalse(first.is_open)
        self.assertRaises(LinkDown, first.publish, "", queue, b"late")
        second = await service.whenConnected()
        self.assertIs(second, connected[1])
        reply = await within(raw.queue_declare(queue=queue, passive=True), 5)
        self.assertEqual(reply.queue, queue)
        health = service.health
        self.assertTrue(health.connected)
        self.assertEqual(health.reconnects, 1)
        self.assertIn("320", health.last_error or "")
        self.assertIn("CONNECTION_FORCED", health.last_error or "")
        self.assertEqual(second.publish("", queue, b"after"), 1)  # sequence restarts

    async def test_dropped_transport_reconnects(self) -> None:
        lost: list[Any] = []
        service = self.service(on_disconnected=lost.append, backoff=_quick_backoff())
        first = await within(service.whenConnected(), 10)
        service._session.client.transport.abortConnection()  # type: ignore[union-attr]
        await wait_for(lambda: lost)
        self.assertFalse(service.health.connected)
        with self.assertRaises(LinkDown):
            await first.declare_quorum_queue("never-declared")
        second = await within(service.whenConnected(), 10)
        self.assertIsNot(second, first)
        self.assertEqual(service.health.reconnects, 1)

    async def test_handshake_failures_back_off(self) -> None:
        """Every attempt connects over TCP and then fails the AMQP login, so
        ClientService's own count stays at 1; relay's grows."""
        backoff = _quick_backoff(initial=0.05, factor=2.0, cap=0.4)
        delays: list[float] = []
        next_delay = backoff.next_delay

        def recording() -> float:
            delays.append(next_delay())
            return delays[-1]

        backoff.next_delay = recording  # type: ignore[method-assign]
        service_counts: list[int] = []

        @implementer(ILogObserver)
        def observe(event: dict[str, Any]) -> None:
            if str(event.get("log_format", "")).startswith("Scheduling retry"):
                service_counts.append(event["attempt"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        service = self.service(URL.replace("guest:guest", "guest:nope"), backoff=backoff)
        await wait_for(lambda: len(delays) >= 5, timeout=10)
        self.assertEqual(delays[:5], [0.05, 0.1, 0.2, 0.4, 0.4])
        self.assertEqual(set(service_counts), {1})
        self.assertIn("ACCESS_REFUSED", service.health.last_error or "")
        self.assertFalse(service.health.connected)

    async def test_failing_on_connected_retries(self) -> None:
        calls: list[Channel] = []

        def on_connected(channel: Channel) -> None:
            calls.append(channel)
            if len(calls) == 1:
                raise RuntimeError("outbox not ready")

        service = self.service(on_connected=on_connected, backoff=_quick_backoff())
        channel = await within(service.whenConnected(), 10)
        self.assertEqual(len(calls), 2)
        self.assertIs(channel, calls[1])
        self.assertIn("outbox not ready", service.health.last_error or "")
        self.assertEqual(service.health.reconnects, 0)

    async def test_channel_error_rebuilds_the_link(self) -> None:
        queue = self.queue_name("mismatch")
        service = self.service(backoff=_quick_backoff())
        channel = await within(service.whenConnected(), 10)
        await channel.declare_quorum_queue(queue)
        with self.assertRaises(ChannelClosed) as raised:
            await channel.declare_quorum_queue(queue, {"x-max-length": 5})
        self.assertIn("406 PRECONDITION_FAILED", describe(raised.exception))
        await wait_for(lambda: service.channel is not None and service.channel is not channel)
        self.assertFalse(channel.is_open)
        self.assertIn("PRECONDITION_FAILED", service.health.last_error or "")
        self.assertEqual(service.health.reconnects, 1)


class StopTests(BrokerTestCase):
    async def test_stop_cancels_waiters_and_closes(self) -> None:
        service = self.service(URL.replace(str(PORT), "1"), backoff=_quick_backoff())
        waiting = service.whenConnected()
        await service.stopService()
        with self.assertRaises(CancelledError):
            await waiting
        with self.assertRaises(CancelledError):
            await service.whenConnected()

    async def test_a_cancelled_wait_is_forgotten(self) -> None:
        service = self.service(URL.replace(str(PORT), "1"), backoff=_quick_backoff())
        gave_up = service.whenConnected()
        gave_up.cancel()
        self.failureResultOf(gave_up, CancelledError)
        self.assertEqual(service._waiters, [])

    async def test_stop_while_connected(self) -> None:
        lost: list[Any] = []
        service = self.service(on_disconnected=lost.append)
        channel = await within(service.whenConnected(), 10)
        await service.stopService()
        self.assertEqual(len(lost), 1)
        self.assertFalse(channel.is_open)
        self.assertFalse(service.health.connected)
        self.assertIsNone(service.health.last_error)


class StallTests(BrokerTestCase):
    timeout = 30

    async def test_silent_stall_detected_within_three_heartbeats(self) -> None:
        heartbeat = 1
        proxy = StallProxy((HOST, PORT))
        port = await proxy.start()
        self.addCleanup(proxy.stop)
        lost_at: list[float] = []
        reasons: list[Failure] = []

        def lost(reason: Failure) -> None:
            lost_at.append(reactor.seconds())
            reasons.append(reason)

        service = self.service(
            URL.replace(str(PORT), str(port)),
            heartbeat=heartbeat,
            on_disconnected=lost,
            backoff=_quick_backoff(),
        )
        await within(service.whenConnected(), 10)
        # Healthy but idle: heartbeats alone keep it up past the limit.
        await sleep(3.5 * heartbeat)
        self.assertEqual(lost_at, [])

        stalled_at = reactor.seconds()
        proxy.stall()
        await wait_for(lambda: lost_at, timeout=10 * heartbeat)
        detected_after = lost_at[0] - stalled_at
        self.assertLessEqual(detected_after, 3 * heartbeat + 0.1)
        self.assertGreater(detected_after, 1 * heartbeat)
        # Noticed by relay's own heartbeat check, not told by anyone.
        reasons[0].trap(HeartbeatTimeout)

        # The new connection goes through the proxy's fresh, unstalled pipe.
        await wait_for(lambda: service.health.connected, timeout=10)
        self.assertEqual(service.health.reconnects, 1)
