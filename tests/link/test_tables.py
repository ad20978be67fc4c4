"""relay.link.tables: the field-table codec, on its own and through RabbitMQ."""

from __future__ import annotations

import datetime
from decimal import Decimal
from io import BytesIO
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from txamqp.codec import Codec

from relay.link.channel import ConfirmTracker, Delivery
from relay.link.tables import TableCodec, decode_table, encode_table

from ._broker import BrokerTestCase, wait_for, within

EVERYTHING: dict[str, Any] = {
    "yes": True,
    "no": False,
    "small": 7,
    "negative": -(2**31),
    "int64": 2**40 + 3,
    "int64-negative": -(2**62),
    "double": 0.1,
    "text": "héllo wörld ✓",
    "bytes": bytes(range(256)),
    "nothing": None,
    "decimal": Decimal("123.45"),
    "when": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
    "nested": {"inner": {"deeper": [1, "two", False]}, "empty": {}},
    "array": [1, 2**40, 1.5, "s", b"\x00\xff", None, True, [], {"k": "v"}],
}


class TableCodecTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        self.assertEqual(decode_table(encode_table(EVERYTHING)), EVERYTHING)

    def test_wire_types(self) -> None:
        self.assertEqual(encode_table({"b": True}), b"\x00\x00\x00\x04\x01bt\x01")
        self.assertEqual(encode_table({"n": None}), b"\x00\x00\x00\x03\x01nV")
        self.assertEqual(
            encode_table({"l": 2**32}), b"\x00\x00\x00\x0b\x01ll\x00\x00\x00\x01\x00\x00\x00\x00"
        )
        self.assertEqual(
            encode_table({"a": [1]}), b"\x00\x00\x00\x0c\x01aA\x00\x00\x00\x05I\x00\x00\x00\x01"
        )
        self.assertEqual(encode_table({"é": "é"})[4:], b"\x02\xc3\xa9S\x00\x00\x00\x02\xc3\xa9")

    def test_decodes_rabbitmq_numeric_types(self) -> None:
        body = (
            b"\x01bb\xff"
            b"\x01BB\xff"
            b"\x01ss\xff\xfe"
            b"\x01uu\xff\xfe"
            b"\x01ii\xff\xff\xff\xff"
            b"\x01ff\x3f\xc0\x00\x00"
        )
        data = len(body).to_bytes(4, "big") + body
        self.assertEqual(
            decode_table(data), {"b": -1, "B": 255, "s": -2, "u": 65534, "i": 2**32 - 1, "f": 1.5}
        )

    def test_refuses_what_it_cannot_send(self) -> None:
        self.assertRaises(TypeError, encode_table, {"x": object()})
        self.assertRaises(ValueError, encode_table, {"x": 2**64})
        self.assertRaises(ValueError, encode_table, {"k" * 256: 1})

    def test_fields_in_methods_keep_bit_packing(self) -> None:
        codec = TableCodec(BytesIO())
        for bit in (True, False, True):
            codec.encode_bit(bit)
        codec.encode_shortstr("ü")
        codec.encode_table({"t": True})
        codec.flush()
        reader = Codec(BytesIO(codec.stream.getvalue()))
        self.assertEqual([reader.decode_bit() for _ in range(3)], [True, False, True])
        self.assertEqual(reader.decode_shortstr(), "ü")


class BrokerTableTests(BrokerTestCase):
    async def _deliveries(self, queue: str, count: int) -> list[Delivery]:
        channel = await self.channel()
        received: list[Delivery] = []

        def settle(delivery: Delivery) -> None:
            received.append(delivery)
            delivery.ack()

        await channel.consume(queue, settle)
        await wait_for(lambda: len(received) >= count)
        return received

    async def test_headers_round_trip_through_rabbitmq(self) -> None:
        channel = await self.channel()
        queue = self.queue_name("headers")
        await channel.declare_quorum_queue(queue)
        tracker = ConfirmTracker()
        tracker.attach(channel)
        properties = {"message_id": "m-1", "content_type": "application/octet-stream"}
        seq = channel.publish("", queue, b"x", headers=EVERYTHING, properties=properties)
        self.assertTrue(await within(tracker.expect(seq), 10))
        (delivery,) = await self._deliveries(queue, 1)
        self.assertEqual(delivery.headers, EVERYTHING)
        self.assertIs(delivery.headers["yes"], True)
        self.assertEqual(delivery.properties, {**properties, "delivery_mode": 2})

    async def test_x_death_is_readable(self) -> None:
        """A dead-lettered message carries x-death (an array of tables)."""
        channel = await self.channel()
        source, dead = self.queue_name("dlx-source"), self.queue_name("dlx-dead")
        await channel.declare_quorum_queue(dead)
        await channel.declare_quorum_queue(
            source, {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
        )
        tracker = ConfirmTracker()
        tracker.attach(channel)
        self.assertTrue(await within(tracker.expect(channel.publish("", source, b"doomed")), 10))
        rejected: list[Delivery] = []

        def refuse(delivery: Delivery) -> None:
            rejected.append(delivery)
            delivery.reject(requeue=False)

        await channel.consume(source, refuse)
        await wait_for(lambda: rejected)
        (delivery,) = await self._deliveries(dead, 1)
        self.assertEqual(delivery.body, b"doomed")
        (death,) = delivery.headers["x-death"]
        self.assertEqual(death["queue"], source)
        self.assertEqual(death["reason"], "rejected")
        self.assertEqual(death["count"], 1)
        self.assertIsInstance(death["time"], datetime.datetime)
        self.assertEqual(death["routing-keys"], [source])
