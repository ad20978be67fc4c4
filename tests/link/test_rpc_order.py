"""
Methods with replies on one channel, from several callers at once (a
worker cancels its consumer while it subscribes again, the outbox
declares a queue meanwhile): each caller gets its own reply.  On a quorum
queue the broker may answer basic.cancel after methods sent behind it,
while txAMQP matches replies to callers by order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from ._broker import BrokerTestCase, within


class RpcOrderTests(BrokerTestCase):
    timeout = 60

    async def test_cancel_and_consume_at_once_on_a_quorum_queue(self) -> None:
        self.link = self.service()
        self.addCleanup(self.link.stopService)
        channel = await within(self.link.whenConnected(), 10)
        queue = self.queue_name("rpc-order")
        await channel.declare_quorum_queue(queue)
        for round in range(30):
            tag = await within(Deferred.fromCoroutine(channel.consume(queue, ignore, prefetch=1)), 10)
            # Sent back to back, as a worker and its outbox may.
            cancelled = Deferred.fromCoroutine(channel.cancel(tag))
            again = Deferred.fromCoroutine(channel.consume(queue, ignore, prefetch=2))
            declared = Deferred.fromCoroutine(channel.declare_destinations([queue + "-x"]))
            results = await within(gatherResults([cancelled, again, declared]), 10)
            self.assertTrue(results[1].startswith("relay-"), (round, results))
            await within(Deferred.fromCoroutine(channel.cancel(results[1])), 10)
        self.queues.append(queue + "-x")


def ignore(delivery: Any) -> None:
    pass
