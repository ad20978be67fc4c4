"""relay.link.frames: the hand-written codecs match txAMQP's generic path
(with relay's fixes) byte for byte, and messages still arrive identical
through the real broker."""

from __future__ import annotations

import datetime
import random
from decimal import Decimal
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from txamqp.connection import Body, Frame, Header, Method
from txamqp.message import Message

from relay.link import frames
from relay.link.channel import ConfirmTracker, Delivery
from relay.link.client import (
    BrokerListener,
    RelayClient,
    RelayDelegate,
    decode_header,
    encode_payload,
)
from relay.link.spec import load_spec

from ._broker import BrokerTestCase, open_channel, wait_for, within

SPEC = load_spec()
BASIC = SPEC.classes.byname["basic"]
EVERY_BYTE = bytes(range(256))

HEADERS: dict[str, Any] = {
    "relay-envelope": '{"id":"x","body":{"é":"ü"}}',
    "flag": True,
    "off": False,
    "small": -7,
    "big": 2**40,
    "ratio": 0.25,
    "money": Decimal("12.34"),
    "raw": EVERY_BYTE,
    "none": None,
    "when": datetime.datetime(2026, 11, 26, 9, 0, tzinfo=datetime.UTC),
    "nested": {"list": [1, "two", {"three": 3}]},
}
ALL_PROPERTIES: dict[str, Any] = {
    "content-type": "application/json",
    "content-encoding": "identity",
    "headers": HEADERS,
    "delivery-mode": 2,
    "priority": 9,
    "correlation-id": "corr-ü",
    "reply-to": "amq.rabbitmq.reply-to",
    "expiration": "60000",
    "message-id": "m-" + "é" * 100,
    "timestamp": 1_764_133_200,
    "type": "job.submit",
    "user-id": "guest",
    "app-id": "relay",
    "cluster-id": "",
}


def generic_client(frame_max: int = 131072) -> tuple[RelayClient, StringTransport]:
    client = RelayClient(RelayDelegate(BrokerListener(), {}), "/", SPEC, clock=Clock())
    transport = StringTransport()
    client.makeConnection(transport)
    transport.clear()  # the protocol header
    client.MAX_LENGTH = frame_max
    return client, transport


def generic_publish(
    exchange: str, routing_key: str, body: bytes, properties: dict[str, Any], *,
    frame_max: int, mandatory: bool, immediate: bool = False,
) -> bytes:
    """What txAMQP's own basic.publish writes (relay's frame codec underneath)."""
    from txamqp.content import Content

    client, transport = generic_client(frame_max)
    channel = client.channelFactory(1, client.outgoing, client)
    channel.basic_publish(
        exchange=exchange, routing_key=routing_key, mandatory=mandatory, immediate=immediate,
        content=Content(body, properties=dict(properties)),
    )
    return bytes(transport.value())


def frame(channel: int, payload: Any) -> bytes:
    client, _ = generic_client()
    return client._pack_frame(Frame(channel, payload))


class PropertiesMatchTheSpec(SynchronousTestCase):
    def test_property_list_is_the_protocol_definitions(self) -> None:
        self.assertEqual(frames.BASIC_PROPERTIES, tuple((f.name, f.type) for f in BASIC.fields))

    def test_method_ids(self) -> None:
        for name, head in [
            ("publish", None), ("deliver", frames.BASIC_DELIVER), ("return", frames.BASIC_RETURN),
            ("ack", frames.BASIC_ACK), ("nack", frames.BASIC_NACK),
        ]:
            method = BASIC.methods.byname[name]
            if head is not None:
                self.assertEqual(head, bytes([0, BASIC.id, 0, method.id]))
        self.assertEqual(BASIC.methods.byname["publish"].id, frames.PUBLISH)


class EncodePublish(SynchronousTestCase):
    def check(self, body: bytes, properties: dict[str, Any], *, frame_max: int = 131072,
              mandatory: bool = True, immediate: bool = False, exchange: str = "relay.to-cloud",
              routing_key: str = "relay.to-cloud") -> None:
        fast = frames.encode_publish(
            1, exchange, routing_key, body, properties, frame_max=frame_max, mandatory=mandatory,
            immediate=immediate,
        )
        generic = generic_publish(
            exchange, routing_key, body, properties, frame_max=frame_max, mandatory=mandatory,
            immediate=immediate,
        )
        self.assertEqual(fast, generic)

    def test_body_sizes_around_frame_max(self) -> None:
        for frame_max in (4096, 131072):
            room = frame_max - 8
            for size in (0, 1, 255, 256, room - 1, room, room + 1, frame_max - 1, frame_max, frame_max + 1, 3 * room):
                body = bytes((i * 7 + size) % 256 for i in range(size))
                self.check(body, {"delivery-mode": 2}, frame_max=frame_max)

    def test_every_byte_value(self) -> None:
        self.check(EVERY_BYTE, {"delivery-mode": 2, "message-id": "m"})
        self.check(EVERY_BYTE[::-1] * 40, {}, frame_max=4096)

    def test_eight_mebibytes(self) -> None:
        self.check(EVERY_BYTE * (8 * 1024 * 1024 // 256), {"delivery-mode": 2})

    def test_all_properties_and_headers(self) -> None:
        self.check(b"{}", ALL_PROPERTIES)

    def test_random_property_subsets_and_flags(self) -> None:
        rng = random.Random(3)
        for _ in range(300):
            names = [n for n in ALL_PROPERTIES if rng.random() < 0.5]
            props = {n: ALL_PROPERTIES[n] for n in names}
            self.check(
                rng.randbytes(rng.randrange(0, 600)), props, frame_max=rng.choice([512, 4096]),
                mandatory=rng.random() < 0.5, immediate=rng.random() < 0.5,
                exchange=rng.choice(["", "x", "é" * 100]), routing_key=rng.choice(["", "rk", "ü" * 127]),
            )

    def test_errors(self) -> None:
        with self.assertRaises(ValueError):
            frames.encode_publish(1, "x" * 256, "", b"", {}, frame_max=4096)
        with self.assertRaises(ValueError):
            frames.encode_publish(1, "", "", b"", {"colour": "red"}, frame_max=4096)
        with self.assertRaises(TypeError):
            frames.encode_publish(1, "", "", b"", {"headers": {"x": object()}}, frame_max=4096)


class EncodeSettlements(SynchronousTestCase):
    def test_ack_and_nack(self) -> None:
        ack, nack = BASIC.methods.byname["ack"], BASIC.methods.byname["nack"]
        for tag in (0, 1, 255, 2**32 + 5, 2**64 - 1):
            for multiple in (False, True):
                self.assertEqual(frames.encode_ack(3, tag, multiple), frame(3, Method(ack, tag, multiple)))
                for requeue in (False, True):
                    self.assertEqual(
                        frames.encode_nack(3, tag, multiple, requeue), frame(3, Method(nack, tag, multiple, requeue))
                    )


class _Recorder(BrokerListener):
    def __init__(self) -> None:
        self.messages: list[tuple[str, int, Message]] = []

    def delivered(self, channel_id: int, message: Message) -> None:
        self.messages.append(("delivered", channel_id, message))

    def returned(self, channel_id: int, message: Message) -> None:
        self.messages.append(("returned", channel_id, message))

    def confirmed(self, channel_id: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        self.messages.append(("confirmed", channel_id, Message(BASIC.methods.byname["ack"], (delivery_tag, multiple, ack))))


def content_frames(channel: int, body: bytes, properties: dict[str, Any], frame_max: int = 4096) -> bytes:
    data = frame(channel, Header(BASIC, 0, len(body), **properties))
    room = frame_max - 8
    for start in range(0, len(body), room):
        data += frame(channel, Body(body[start : start + room]))
    return data


class DecodeIncoming(SynchronousTestCase):
    """The fast receive path gives the delegate what txAMQP's path gives it."""

    def receive(self, data: bytes, *, open_channel: bool, split: int | None) -> tuple[RelayClient, _Recorder]:
        recorder = _Recorder()
        client = RelayClient(RelayDelegate(recorder, {}), "/", SPEC, clock=Clock())
        client.makeConnection(StringTransport())
        if open_channel:
            client.channels[1] = client.channelFactory(1, client.outgoing, client)
        step = split or len(data)
        for start in range(0, len(data), step):
            client.dataReceived(data[start : start + step])
        return client, recorder

    def stream(self) -> tuple[bytes, list[tuple[str, tuple[Any, ...], bytes | None, dict[str, Any] | None]]]:
        deliver, ret = BASIC.methods.byname["deliver"], BASIC.methods.byname["return"]
        ack, nack = BASIC.methods.byname["ack"], BASIC.methods.byname["nack"]
        rng = random.Random(7)
        data = b""
        expected: list[tuple[str, tuple[Any, ...], bytes | None, dict[str, Any] | None]] = []
        for n in range(60):
            body = rng.choice([b"", EVERY_BYTE, rng.randbytes(rng.randrange(0, 9000)), "é".encode() * 3000])
            names = [p for p in ALL_PROPERTIES if rng.random() < 0.5]
            props = {p: ALL_PROPERTIES[p] for p in names}
            header = content_frames(1, body, props)
            decoded_props = decode_header(SPEC, encode_payload(Header(BASIC, 0, len(body), **props))).properties
            kind = n % 4
            if kind == 0:
                args: tuple[Any, ...] = (f"relay-{n}", n + 1, n % 3 == 0, "ex-é", "rk")
                data += frame(1, Method(deliver, *args)) + header
                expected.append(("delivered", args, body, decoded_props))
            elif kind == 1:
                args = (312, "NO_ROUTE", "", f"q{n}")
                data += frame(1, Method(ret, *args)) + header
                expected.append(("returned", args, body, decoded_props))
            elif kind == 2:
                data += frame(1, Method(ack, n, n % 2 == 0))
                expected.append(("confirmed", (n, n % 2 == 0, True), None, None))
            else:
                data += frame(1, Method(nack, n, True, False))
                expected.append(("confirmed", (n, True, False), None, None))
        return data, expected

    def check(self, recorder: _Recorder, expected: list[Any]) -> None:
        self.assertEqual(len(recorder.messages), len(expected))
        for (event, channel_id, message), (kind, args, body, props) in zip(recorder.messages, expected, strict=True):
            self.assertEqual((event, channel_id), (kind, 1))
            self.assertEqual(tuple(message.fields), args)
            if body is not None:
                self.assertEqual(type(message.content.body), bytes)
                self.assertEqual(message.content.body, body)
                self.assertEqual(message.content.properties, props)

    def test_fast_path_whole_and_split(self) -> None:
        data, expected = self.stream()
        for split in (None, 1, 7, 1000, 4099):
            client, recorder = self.receive(data, open_channel=True, split=split)
            self.check(recorder, expected)
            self.assertEqual(client._received, bytearray())

    def test_generic_path_gives_the_same(self) -> None:
        # No channel object yet: everything goes txAMQP's way.
        data, expected = self.stream()
        _, recorder = self.receive(data, open_channel=False, split=1000)
        self.check(recorder, expected)

    def test_fast_path_skips_txamqps_queues(self) -> None:
        data, expected = self.stream()
        recorder = _Recorder()
        client = RelayClient(RelayDelegate(recorder, {}), "/", SPEC, clock=Clock())
        client.makeConnection(StringTransport())
        client.channels[1] = client.channelFactory(1, client.outgoing, client)
        generic: list[Frame] = []
        client.frame_received = generic.append  # type: ignore[method-assign]
        client.dataReceived(data)
        self.assertEqual(generic, [])
        self.check(recorder, expected)

    def test_bad_frame_end(self) -> None:
        data = bytearray(frames.encode_ack(1, 5))
        data[-1] = 0
        client = RelayClient(RelayDelegate(_Recorder(), {}), "/", SPEC, clock=Clock())
        client.makeConnection(StringTransport())
        from txamqp.protocol import GarbageException

        with self.assertRaises(GarbageException):
            client.dataReceived(bytes(data))


class HeartbeatCheck(SynchronousTestCase):
    def test_silence_is_measured_from_the_last_frame(self) -> None:
        clock = Clock()
        client = RelayClient(RelayDelegate(BrokerListener(), {}), "/", SPEC, heartbeat=1, clock=clock)
        transport = StringTransport()
        client.makeConnection(transport)
        client.channels[1] = client.channelFactory(1, client.outgoing, client)
        clock.advance(2.5)
        client.dataReceived(frames.encode_ack(1, 1))
        clock.advance(1.0)  # 3.5 s since connect, 1 s since the last frame
        self.assertFalse(transport.disconnecting)
        clock.advance(1.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.2)  # 3.1 s of silence
        self.assertTrue(transport.disconnecting)


class ThroughTheBroker(BrokerTestCase):
    """The fast and the generic publish deliver the same bytes and properties."""

    timeout = 60

    async def test_fast_and_generic_publish_arrive_identical(self) -> None:
        channel = await self.channel()
        queue = self.queue_name("frames")
        await channel.declare_quorum_queue(queue)
        tracker = ConfirmTracker()
        tracker.attach(channel)
        frame_max = 131072
        room = frame_max - 8
        bodies = [
            b"", EVERY_BYTE, EVERY_BYTE[::-1] * 9, bytes(range(256)) * (room // 256) + b"x" * (room % 256),
            b"y" * (room - 1), b"z" * (room + 1), b"q" * (frame_max - 1), b"r" * (frame_max + 1),
            EVERY_BYTE * (8 * 1024 * 1024 // 256),
        ]
        headers = {k: v for k, v in HEADERS.items() if k not in ("none", "money")}
        confirms = []
        for n, body in enumerate(bodies):
            props = {"message_id": f"m{n}", "content_type": "application/octet-stream", "timestamp": 1_764_133_200}
            confirms.append(tracker.expect(channel.publish("", queue, body, headers=headers, properties=props)))
        for confirm in confirms:
            self.assertTrue(await within(confirm, 30))

        # The same through txAMQP's own basic.publish, on a raw connection.
        raw = await self.raw()
        raw_channel = await open_channel(raw, confirm=True)
        from txamqp.content import Content

        for n, body in enumerate(bodies):
            wire = {"message-id": f"m{n}", "content-type": "application/octet-stream", "timestamp": 1_764_133_200,
                    "headers": headers, "delivery-mode": 2}
            raw_channel.basic_publish(exchange="", routing_key=queue, mandatory=True, content=Content(body, properties=wire))
        await within(raw_channel.basic_qos(prefetch_count=1), 10)  # a round trip: published before this

        received: list[Delivery] = []

        def got(delivery: Delivery) -> None:
            received.append(delivery)
            delivery.ack()

        await channel.consume(queue, got)
        await wait_for(lambda: len(received) >= 2 * len(bodies), timeout=40)
        fast, generic = received[: len(bodies)], received[len(bodies) :]
        for sent, a, b in zip(bodies, fast, generic, strict=True):
            self.assertEqual(type(a.body), bytes)
            self.assertEqual(a.body, sent)
            self.assertEqual(b.body, sent)
            self.assertEqual(a.headers, b.headers)
            self.assertEqual(a.properties, b.properties)
        self.assertEqual(fast[1].headers["raw"], EVERY_BYTE)
        self.assertEqual(fast[1].headers["relay-envelope"], HEADERS["relay-envelope"])
