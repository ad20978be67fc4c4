"""relay's AMQP 0-9-1 definition, and the no_wait fix against the broker."""

from __future__ import annotations

from twisted.internet.defer import TimeoutError
from twisted.trial.unittest import SynchronousTestCase
from txamqp import spec as txspec

from relay.link.spec import alias_no_wait, load_spec, spec_bytes

from ._broker import BrokerTestCase, open_channel, within


def _index(spec: txspec.Spec) -> dict[str, tuple[int, int]]:
    return {f"{c.name}.{m.name}": (c.id, m.id) for c in spec.classes for m in c.methods}


class SpecTests(SynchronousTestCase):
    def test_loaded_once(self) -> None:
        self.assertIs(load_spec(), load_spec())
        self.assertEqual((load_spec().major, load_spec().minor), (0, 9))

    def test_class_and_method_numbers(self) -> None:
        index = _index(load_spec())
        expected = {
            "connection.start": (10, 10),
            "connection.tune-ok": (10, 31),
            "connection.close-ok": (10, 51),
            "connection.blocked": (10, 60),
            "connection.unblocked": (10, 61),
            "channel.close": (20, 40),
            "exchange.bind": (40, 30),
            "exchange.unbind-ok": (40, 51),
            "queue.unbind": (50, 50),
            "basic.publish": (60, 40),
            "basic.deliver": (60, 60),
            "basic.ack": (60, 80),
            "basic.nack": (60, 120),
            "confirm.select": (85, 10),
            "confirm.select-ok": (85, 11),
            "tx.rollback-ok": (90, 31),
        }
        for name, numbers in expected.items():
            self.assertEqual(index[name], numbers, name)
        self.assertEqual(len(index), 62)

    def test_frame_constants(self) -> None:
        constants = {c.name: c.id for c in load_spec().constants}
        self.assertEqual(
            [
                constants[n]
                for n in (
                    "frame-method",
                    "frame-header",
                    "frame-body",
                    "frame-heartbeat",
                    "frame-end",
                )
            ],
            [1, 2, 3, 8, 206],
        )

    def test_content_properties_in_wire_order(self) -> None:
        basic = load_spec().classes.byname["basic"]
        self.assertEqual(
            [f.name for f in basic.fields][:4],
            ["content-type", "content-encoding", "headers", "delivery-mode"],
        )
        self.assertEqual(len(basic.fields), 14)

    def test_no_wait_keyword(self) -> None:
        method = load_spec().classes.byname["queue"].methods.byname["declare"]
        self.assertIn("no_wait", method.fields.bypyname)
        self.assertIs(method.fields.byname["nowait"], method.fields.byname["no-wait"])
        # confirm.select keeps RabbitMQ's spelling.
        select = load_spec().classes.byname["confirm"].methods.byname["select"]
        self.assertIn("nowait", select.fields.bypyname)

    def test_alias_is_idempotent(self) -> None:
        spec = txspec.load_string(spec_bytes())
        alias_no_wait(alias_no_wait(spec))
        self.assertEqual(_index(spec), _index(load_spec()))


class NoWaitTests(BrokerTestCase):
    async def test_stock_naming_hangs(self) -> None:
        """Reproduces the documented hang: without the alias txAMQP waits for a
        declare-ok that a no-wait declare never gets."""
        stock = txspec.load_string(spec_bytes())
        client = await self.raw(spec=stock)
        channel = await open_channel(client)
        name = self.queue_name("nowait-stock")
        with self.assertRaises(TimeoutError):
            await within(channel.queue_declare(queue=name, no_wait=True), 1.0)

    async def test_no_wait_returns_at_once(self) -> None:
        client = await self.raw()
        channel = await open_channel(client)
        name = self.queue_name("nowait")
        result = await within(channel.queue_declare(queue=name, durable=True, no_wait=True), 2.0)
        self.assertIsNone(result)
        # The queue exists, and the channel still pairs replies correctly.
        reply = await within(channel.queue_declare(queue=name, passive=True), 2.0)
        self.assertEqual(reply.queue, name)
        await within(
            channel.queue_bind(queue=name, exchange="amq.direct", routing_key=name, no_wait=True),
            2.0,
        )
        purged = await within(channel.queue_purge(queue=name), 2.0)
        self.assertEqual(purged.message_count, 0)
