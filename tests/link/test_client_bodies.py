"""relay.link.client, fix 2: message bodies arrive as the exact bytes that were published."""

from __future__ import annotations

from relay.link.channel import ConfirmTracker, Delivery

from ._broker import BrokerTestCase, wait_for, within

FRAME_MAX = 131072  # RabbitMQ's default, negotiated by the client as offered
BODY_FRAME = FRAME_MAX - 8  # payload room in one body frame


class BodyTests(BrokerTestCase):
    timeout = 40

    async def _round_trip(self, bodies: list[bytes]) -> list[Delivery]:
        channel = await self.channel()
        queue = self.queue_name("bodies")
        await channel.declare_quorum_queue(queue)
        tracker = ConfirmTracker()
        tracker.attach(channel)
        confirms = [tracker.expect(channel.publish("", queue, body)) for body in bodies]
        for confirm in confirms:
            self.assertTrue(await within(confirm, 20))
        received: list[Delivery] = []

        def got(delivery: Delivery) -> None:
            received.append(delivery)
            delivery.ack()

        await channel.consume(queue, got)
        await wait_for(lambda: len(received) >= len(bodies), timeout=20)
        return received

    async def test_sizes_and_every_byte_value(self) -> None:
        every_byte = bytes(range(256))
        bodies = [
            b"",
            b"\x00",
            b"a",
            every_byte,
            every_byte[::-1] * 3,
            bytes((i * 7) % 256 for i in range(FRAME_MAX - 1)),
            bytes((i * 13) % 256 for i in range(FRAME_MAX + 1)),
        ]
        received = await self._round_trip(bodies)
        self.assertEqual([type(d.body) for d in received], [bytes] * len(bodies))
        self.assertEqual([d.body for d in received], bodies)

    async def test_text_first_frame_then_binary(self) -> None:
        """txAMQP keeps a UTF-8 first frame as text and drops it when a binary
        frame follows; a multi-byte UTF-8 body is never delivered at all."""
        bodies = [
            b"a" * BODY_FRAME + bytes(range(128, 256)),
            "é".encode() * (BODY_FRAME // 2 + 10),
            b"plain ascii",
        ]
        received = await self._round_trip(bodies)
        self.assertEqual([d.body for d in received], bodies)

    async def test_eight_mebibytes(self) -> None:
        body = bytes(range(256)) * (8 * 1024 * 1024 // 256)
        (delivery,) = await self._round_trip([body])
        self.assertEqual(len(delivery.body), len(body))
        self.assertEqual(delivery.body, body)
