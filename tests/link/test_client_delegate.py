"""relay.link.client, fix 4: publisher confirms, returns, consumer cancels, blocking and
capabilities reach relay instead of killing the connection."""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from txamqp.connection import Frame, Method

from relay.link.channel import ConfirmTracker, ReturnedMessage
from relay.link.client import (
    CLIENT_CAPABILITIES,
    PROTOCOL_HEADER,
    BrokerListener,
    RelayClient,
    RelayDelegate,
    encode_payload,
)
from relay.link.spec import load_spec

from ._broker import URL, BrokerTestCase, open_channel, wait_for, within


class _Recorder(BrokerListener):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def blocked(self, reason: str) -> None:
        self.events.append(("blocked", reason))

    def unblocked(self) -> None:
        self.events.append(("unblocked",))

    def confirmed(self, channel_id: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        self.events.append(("confirmed", channel_id, delivery_tag, multiple, ack))


def _frame(channel: int, klass: str, method: str, **fields: Any) -> bytes:
    spec = load_spec()
    meth = spec.classes.byname[klass].methods.byname[method]
    args = [fields.get(f.name.replace("-", "_"), meth.DEFAULTS[f.type]) for f in meth.fields]
    payload = encode_payload(Method(meth, *args))
    return struct.pack("!BHI", 1, channel, len(payload)) + payload + b"\xce"


def _client(listener: BrokerListener) -> tuple[RelayClient, StringTransport]:
    properties = {"capabilities": CLIENT_CAPABILITIES, "connection_name": "unit"}
    client = RelayClient(RelayDelegate(listener, properties), "/", load_spec())
    transport = StringTransport()
    client.makeConnection(transport)
    return client, transport


def _sent_methods(client: RelayClient, data: bytes) -> list[Method]:
    methods = []
    while data:
        kind, channel, size = struct.unpack_from("!BHI", data)
        frame = client._decode_frame(kind, channel, data[7 : 7 + size])
        data = data[8 + size :]
        if frame.payload.type == Frame.METHOD:
            methods.append(frame.payload)
    return methods


def _store(acked: bool, results: dict[int, bool], seq: int) -> None:
    results[seq] = acked


class DelegateUnitTests(SynchronousTestCase):
    def test_protocol_header_is_0_9_1(self) -> None:
        client, transport = _client(BrokerListener())
        self.assertEqual(transport.value(), PROTOCOL_HEADER)
        self.assertEqual(PROTOCOL_HEADER, b"AMQP\x00\x00\x09\x01")

    def test_start_ok_advertises_capabilities_as_booleans(self) -> None:
        client, transport = _client(BrokerListener())
        client.authenticate("user", "secret", mechanism="PLAIN")
        transport.clear()
        client.dataReceived(
            _frame(
                0,
                "connection",
                "start",
                version_major=0,
                version_minor=9,
                server_properties={"product": "RabbitMQ"},
                mechanisms="PLAIN",
                locales="en_US",
            )
        )
        (start_ok,) = _sent_methods(client, transport.value())
        self.assertEqual(start_ok.method.name, "start-ok")
        properties, mechanism, response, _ = start_ok.args
        self.assertEqual(
            properties["capabilities"],
            {
                "publisher_confirms": True,
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                "basic.nack": True,
                "authentication_failure_close": True,
            },
        )
        for value in properties["capabilities"].values():
            self.assertIs(value, True)
        self.assertEqual((mechanism, response), ("PLAIN", "\0user\0secret"))

    def test_blocked_and_unblocked_reach_the_listener(self) -> None:
        recorder = _Recorder()
        client, transport = _client(recorder)
        client.dataReceived(_frame(0, "connection", "blocked", reason="low on memory"))
        client.dataReceived(_frame(0, "connection", "unblocked"))
        self.assertEqual(recorder.events, [("blocked", "low on memory"), ("unblocked",)])
        self.assertFalse(transport.disconnecting)

    def test_nack_with_multiple(self) -> None:
        recorder = _Recorder()
        client, transport = _client(recorder)
        client.dataReceived(_frame(1, "basic", "nack", delivery_tag=7, multiple=True))
        client.dataReceived(_frame(1, "basic", "ack", delivery_tag=9, multiple=False))
        self.assertEqual(
            recorder.events, [("confirmed", 1, 7, True, False), ("confirmed", 1, 9, False, True)]
        )
        self.assertFalse(transport.disconnecting)

    def test_listener_errors_do_not_close_the_connection(self) -> None:
        class Broken(BrokerListener):
            def blocked(self, reason: str) -> None:
                raise RuntimeError("bug in a callback")

        client, transport = _client(Broken())
        client.dataReceived(_frame(0, "connection", "blocked", reason="x"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(transport.disconnecting)

    def test_encoding_error_drops_the_link_and_keeps_the_writer(self) -> None:
        client, transport = _client(BrokerListener())
        meth = load_spec().classes.byname["basic"].methods.byname["ack"]
        client.outgoing.put(Frame(1, Method(meth, "not a number", False)))
        self.assertEqual(len(self.flushLoggedErrors(struct.error)), 1)
        self.assertTrue(transport.disconnecting)
        transport.clear()
        client.outgoing.put(Frame(1, Method(meth, 5, False)))
        (ack,) = _sent_methods(client, transport.value())
        self.assertEqual(ack.args, (5, False))

    def test_confirm_tracker_expands_multiple(self) -> None:
        tracker = ConfirmTracker()
        results: dict[int, bool] = {}
        for seq in range(1, 7):
            tracker.expect(seq).addCallback(_store, results, seq)
        tracker.ack(3, multiple=True)
        tracker.nack(5, multiple=False)
        tracker.nack(6, multiple=True)
        self.assertEqual(results, {1: True, 2: True, 3: True, 5: False, 4: False, 6: False})
        self.assertEqual(tracker.outstanding, 0)


class ConfirmTests(BrokerTestCase):
    async def test_acks_cover_every_publish_once(self) -> None:
        channel = await self.channel()
        queue = self.queue_name("confirms")
        await channel.declare_quorum_queue(queue)
        events: list[tuple[int, bool]] = []
        channel.on_ack = lambda seq, multiple: events.append((seq, multiple))
        channel.on_nack = lambda seq, multiple: self.fail(f"unexpected nack {seq}")
        count = 500
        seqs = [channel.publish("", queue, b"%d" % i) for i in range(count)]
        self.assertEqual(seqs, list(range(1, count + 1)))
        covered: list[int] = []

        def expand() -> bool:
            covered.clear()
            last = 0
            for seq, multiple in sorted(events):
                covered.extend(range(last + 1, seq + 1) if multiple else [seq])
                last = seq
            return len(covered) >= count

        await wait_for(expand, timeout=15)
        self.assertEqual(covered, seqs)
        self.assertIn(True, [multiple for _, multiple in events], "no multiple ack seen")

    async def test_nacks_when_the_queue_refuses(self) -> None:
        # A classic queue: a quorum queue applies its length limit a little late.
        queue = self.queue_name("full")
        raw = await open_channel(await self.raw())
        limits = {"x-queue-type": "classic", "x-max-length": 1, "x-overflow": "reject-publish"}
        await within(raw.queue_declare(queue=queue, durable=True, arguments=limits), 5)
        channel = await self.channel()
        tracker = ConfirmTracker()
        tracker.attach(channel)
        first = await within(tracker.expect(channel.publish("", queue, b"fits")), 10)
        rest = [tracker.expect(channel.publish("", queue, b"%d" % i)) for i in range(20)]
        results = [await within(d, 10) for d in rest]
        self.assertTrue(first)
        self.assertEqual(results, [False] * 20)

    async def test_return_comes_before_the_ack(self) -> None:
        channel = await self.channel()
        events: list[Any] = []
        channel.on_return = events.append
        channel.on_ack = lambda seq, multiple: events.append(("ack", seq))
        seq = channel.publish("", "relay-test-no-such-queue", b"lost?", headers={"id": 1})
        await wait_for(lambda: len(events) >= 2)
        returned, ack = events
        self.assertIsInstance(returned, ReturnedMessage)
        self.assertEqual((returned.reply_code, returned.reply_text), (312, "NO_ROUTE"))
        self.assertEqual((returned.body, returned.headers), (b"lost?", {"id": 1}))
        self.assertEqual(ack, ("ack", seq))


class CancelNotifyTests(BrokerTestCase):
    async def test_broker_cancel_reaches_the_channel(self) -> None:
        channel = await self.channel()
        queue = self.queue_name("cancel")
        await channel.declare_quorum_queue(queue)
        cancelled: list[str] = []
        channel.on_consumer_cancelled = cancelled.append
        tag = await channel.consume(queue, lambda d: None)
        # Deleted from another connection, as an operator would.
        other = await self.channel()
        await other.delete_queue(queue)
        await wait_for(lambda: cancelled, timeout=5)
        self.assertEqual(cancelled, [tag])
        self.assertTrue(channel.is_open)


class AuthFailureTests(BrokerTestCase):
    async def test_refused_login_says_why(self) -> None:
        service = self.service(URL.replace("guest:guest", "guest:wrong-password"))
        await wait_for(lambda: service.health.last_error is not None, timeout=10)
        self.assertIn("403", service.health.last_error)
        self.assertIn("ACCESS_REFUSED", service.health.last_error)
        self.assertFalse(service.health.connected)
