"""
Channel.ack coalesces: acks given in one reactor turn go to the broker as
one multiple ack for the settled run from the oldest unsettled delivery,
and single acks behind a delivery still in progress, never acking one that
is not settled.  Checked against the real broker: what is left on the queue
once the connection is gone is exactly what was not acked.
"""

from __future__ import annotations

import random

from relay.link.channel import Channel, ConfirmTracker, Delivery

from ._broker import BrokerTestCase, sleep, wait_for, within


class AckTests(BrokerTestCase):
    timeout = 40

    async def consuming(self, count: int) -> tuple[Channel, str, list[Delivery], list[tuple[int, bool]]]:
        """
        A queue with C{count} messages, consumed without settling; the acks
        the channel sends are recorded as (tag, multiple).
        """
        self.link = self.service()
        channel = await within(self.link.whenConnected(), 10)
        queue = self.queue_name("acks")
        await channel.declare_quorum_queue(queue)
        tracker = ConfirmTracker()
        tracker.attach(channel)
        confirms = [tracker.expect(channel.publish("", queue, b"%d" % n)) for n in range(count)]
        for confirm in confirms:
            self.assertTrue(await within(confirm, 10))
        deliveries: list[Delivery] = []
        await channel.consume(queue, deliveries.append, prefetch=count)
        await wait_for(lambda: len(deliveries) == count, timeout=10)
        sent: list[tuple[int, bool]] = []
        send = channel._send_ack

        def record(tag: int, multiple: bool) -> None:
            sent.append((tag, multiple))
            send(tag, multiple)

        channel._send_ack = record  # type: ignore[method-assign]
        return channel, queue, deliveries, sent

    async def left_on(self, queue: str) -> int:
        """
        Close the connection (the broker requeues whatever is unacked) and
        count the queue's messages.
        """
        await sleep(0.2)  # the acks reach the broker before the close
        await self.link.stopService()
        other = await self.channel()
        return await other.declare_quorum_queue(queue)

    async def test_acks_in_any_order_in_one_turn_are_one_frame(self) -> None:
        channel, queue, deliveries, sent = await self.consuming(50)
        shuffled = deliveries[:]
        random.Random(3).shuffle(shuffled)
        for delivery in shuffled:
            delivery.ack()
        await sleep(0)
        self.assertEqual(sent, [(deliveries[-1].delivery_tag, True)])
        self.assertTrue(channel.is_open)
        self.assertEqual(await self.left_on(queue), 0)

    async def test_a_delivery_in_progress_is_never_acked(self) -> None:
        channel, queue, deliveries, sent = await self.consuming(20)
        for delivery in deliveries[:5] + deliveries[6:]:
            delivery.ack()
        await sleep(0)
        tags = [d.delivery_tag for d in deliveries]
        self.assertEqual(sent, [(tags[4], True), *[(t, False) for t in tags[6:]]])
        # Settling the one left: a multiple ack covers it and those already
        # acked one by one after it, which the broker no longer counts.
        deliveries[5].ack()
        await sleep(0)
        self.assertEqual(sent[-1], (tags[5], True))
        self.assertTrue(channel.is_open)
        self.assertEqual(await self.left_on(queue), 0)

    async def test_a_nack_goes_after_the_acks_before_it(self) -> None:
        channel, queue, deliveries, sent = await self.consuming(10)
        for delivery in deliveries[:4]:
            delivery.ack()
        deliveries[4].nack(requeue=True)
        for delivery in deliveries[5:9]:
            delivery.ack()
        await sleep(0)
        tags = [d.delivery_tag for d in deliveries]
        # The first four went before the nack; the nacked one is covered by
        # the next multiple ack without being acked (the broker has it back).
        self.assertEqual(sent, [(tags[3], True), (tags[8], True)])
        self.assertTrue(channel.is_open)
        # The nacked one comes back; the tenth was never settled.
        await wait_for(lambda: len(deliveries) == 11, timeout=10)
        self.assertEqual(deliveries[-1].body, b"4")
        self.assertEqual(await self.left_on(queue), 2)

    async def test_acks_after_the_connection_is_gone_are_dropped(self) -> None:
        channel, queue, deliveries, sent = await self.consuming(3)
        deliveries[0].ack()
        await self.link.stopService()
        await sleep(0)
        self.assertEqual(sent, [])
        other = await self.channel()
        self.assertEqual(await other.declare_quorum_queue(queue), 3)
