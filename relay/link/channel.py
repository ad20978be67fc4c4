"""The AMQP channel as relay's outbox and inbox use it.

One L{Channel} lives exactly as long as one broker connection: confirm
sequence numbers and delivery tags mean nothing on another, so a new one is
handed out after every reconnect (see L{relay.link.connection.LinkService}).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import ChannelClosed, Closed
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel

from relay.link import frames
from relay.link.client import RelayClient
from relay.link.tables import encode_table

log = Logger()

PERSISTENT = 2
# Message properties by their Python names (content_type, message_id, ...).
PROPERTY_NAMES = frozenset(
    {
        "content_type",
        "content_encoding",
        "delivery_mode",
        "priority",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "timestamp",
        "type",
        "user_id",
        "app_id",
    }
)


class LinkDown(Exception):
    """The channel is gone (its connection was lost or closed); wait for the next one."""


@dataclass(frozen=True)
class Delivery:
    """One message handed to a consumer. Settle it exactly once, on C{channel}."""

    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]
    delivery_tag: int
    redelivered: bool
    exchange: str
    routing_key: str
    consumer_tag: str
    channel: Channel = field(repr=False, compare=False)

    def ack(self) -> None:
        self.channel.ack(self.delivery_tag)

    def nack(self, requeue: bool = True) -> None:
        self.channel.nack(self.delivery_tag, requeue=requeue)

    def reject(self, requeue: bool = True) -> None:
        self.channel.reject(self.delivery_tag, requeue=requeue)


@dataclass(frozen=True)
class ReturnedMessage:
    """A mandatory message that no queue took (C{basic.return}); its ack follows."""

    reply_code: int
    reply_text: str
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    properties: dict[str, Any]


# Whatever it returns is ignored, unless awaitable: then its failure is logged.
ConsumerCallback = Callable[[Delivery], object]


def _split_properties(content: Content) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    props = {name.replace("-", "_"): value for name, value in content.properties.items()}
    headers = props.pop("headers", None) or {}
    return content.body, headers, props


class Channel:
    """Channel 1 of a live broker connection, in confirm mode.

    Set the callbacks right after receiving the channel (they are per channel):
    C{on_ack(seq, multiple)} / C{on_nack(seq, multiple)} for publisher
    confirms (C{multiple} covers every sequence number up to C{seq}),
    C{on_return(ReturnedMessage)}, C{on_consumer_cancelled(consumer_tag)}.
    Calls on a channel whose connection is gone raise L{LinkDown}.
    """

    def __init__(self, amqp_channel: AMQChannel, clock: IReactorTime) -> None:
        self._channel = amqp_channel
        # relay's client encodes publishes and settlements by hand (see
        # relay.link.frames); a stock txAMQP client (some tests) does not.
        client = getattr(amqp_channel, "client", None)
        self._fast: RelayClient | None = client if isinstance(client, RelayClient) else None
        self._closed: Failure | None = None
        self._next_seq = 1
        self._consumers: dict[str, ConsumerCallback] = {}
        self._exchanging = DeferredLock()
        self._tags = itertools.count(1)
        # Delivery tags in delivery order from the oldest not yet settled,
        # those of them settled (acks included that wait for _flush_acks),
        # and the waiting acks.
        self._unsettled: deque[int] = deque()
        self._settled: set[int] = set()
        self._acks: list[int] = []
        self._flush_call: IDelayedCall | None = None
        self._clock = clock
        self.on_ack: Callable[[int, bool], object] | None = None
        self.on_nack: Callable[[int, bool], object] | None = None
        self.on_return: Callable[[ReturnedMessage], object] | None = None
        self.on_consumer_cancelled: Callable[[str], object] | None = None

    @property
    def is_open(self) -> bool:
        return self._closed is None and not self._channel.closed

    def _check_open(self) -> None:
        if self._closed is not None:
            raise LinkDown(f"channel closed: {self._closed.getErrorMessage()}")
        if self._channel.closed:
            raise LinkDown(f"channel closed: {self._channel.reason}")

    async def _call(self, request: Deferred[Any]) -> Any:
        """Await a method with a reply; the connection going away is LinkDown."""
        try:
            return await request
        except ChannelClosed:
            raise  # the broker refused something: a real error, keep its reply code
        except Closed as e:
            raise LinkDown(f"connection closed: {e}") from e

    async def _exchange(self, send: Callable[[], Sequence[Deferred[Any]]]) -> list[Any]:
        """Send methods with replies (C{send()} invokes them, back to back)
        and await the replies, with no other caller's methods in between.

        txAMQP gives replies to callers in the order it sent the methods,
        but the broker does not always answer in that order: on a quorum
        queue, basic.cancel-ok can come after the reply to a basic.qos sent
        behind it, and each caller would get the other's reply.  One
        exchange at a time keeps them apart.
        """
        async with self._exchanging:
            self._check_open()
            return await self._call_all(send())

    async def _call_all(self, requests: Sequence[Deferred[Any]]) -> list[Any]:
        """Await methods sent back to back, in order; on the first failure
        the later ones (which fail too) are silenced and the first raised."""
        results = []
        for index, request in enumerate(requests):
            try:
                results.append(await self._call(request))
            except BaseException:
                for later in requests[index + 1 :]:
                    later.addErrback(lambda _: None)
                raise
        return results

    def _send(self, sent: Deferred[Any]) -> None:
        # Methods without a reply: txAMQP only fails them if the channel
        # closed in the meantime, which the connection reports on its own.
        sent.addErrback(lambda f: log.debug("send failed: {f}", f=f.getErrorMessage()))

    async def declare_quorum_queue(
        self, name: str, arguments: Mapping[str, Any] | None = None
    ) -> int:
        """Declare a durable quorum queue (idempotent); return its message count.

        Declaring an existing queue with other arguments is a channel error
        (406), which closes this channel and so the connection.
        """
        self._check_open()
        args = {"x-queue-type": "quorum", **(arguments or {})}
        (reply,) = await self._exchange(
            lambda: [self._channel.queue_declare(queue=name, durable=True, arguments=args)]
        )
        return int(reply.message_count)

    async def declare_destination(self, name: str) -> None:
        """Declare destination C{name}: a durable direct exchange and a
        durable quorum queue of that name, bound with routing key C{name}
        (idempotent).

        relay publishes to a destination's exchange rather than through the
        default exchange, because a broker permission can then limit which
        destinations a user may write to (the default exchange reaches every
        queue).
        """
        await self.declare_destinations([name])

    async def declare_destinations(self, names: Sequence[str]) -> None:
        """Declare several destinations in one round trip.

        The methods are sent back to back without waiting for each reply:
        the broker handles a channel's methods in order, so the binding
        follows its exchange and queue.  On a 300 ms link this saves two
        round trips per destination at every connect.
        """
        self._check_open()
        args = {"x-queue-type": "quorum"}

        def send() -> list[Deferred[Any]]:
            replies: list[Deferred[Any]] = []
            for name in names:
                replies.append(self._channel.exchange_declare(exchange=name, type="direct", durable=True))
                replies.append(self._channel.queue_declare(queue=name, durable=True, arguments=args))
                replies.append(self._channel.queue_bind(queue=name, exchange=name, routing_key=name))
            return replies

        await self._exchange(send)

    async def delete_queue(self, name: str) -> int:
        """Delete a queue; return how many messages went with it."""
        self._check_open()
        (reply,) = await self._exchange(lambda: [self._channel.queue_delete(queue=name)])
        return int(reply.message_count)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        mandatory: bool = True,
    ) -> int:
        """Publish a persistent message; return its confirm sequence number.

        Only the broker's ack for that number means the message is safe; a
        nack, a lost connection, or silence mean publish it again.
        """
        self._check_open()
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"body must be bytes, not {type(body).__name__}")
        props = dict(properties or {})
        unknown = set(props) - PROPERTY_NAMES
        if unknown:
            raise ValueError(f"unknown message properties: {sorted(unknown)}")
        wire = {name.replace("_", "-"): value for name, value in props.items()}
        wire.setdefault("delivery-mode", PERSISTENT)
        fast = self._fast
        if fast is not None:
            if headers:
                wire["headers"] = dict(headers)
            data = frames.encode_publish(
                self._channel.id, exchange, routing_key, bytes(body), wire,
                frame_max=fast.MAX_LENGTH, mandatory=mandatory,
            )
            seq = self._next_seq
            self._next_seq += 1
            fast.send_encoded(data)
            return seq
        if headers:
            encode_table(headers)  # raise here, not later in the frame writer
            wire["headers"] = dict(headers)
        seq = self._next_seq
        self._next_seq += 1
        self._send(
            self._channel.basic_publish(
                exchange=exchange,
                routing_key=routing_key,
                mandatory=mandatory,
                content=Content(bytes(body), properties=wire),
            )
        )
        return seq

    async def consume(
        self,
        queue: str,
        callback: ConsumerCallback,
        *,
        prefetch: int = 64,
        arguments: Mapping[str, Any] | None = None,
    ) -> str:
        """Consume C{queue} with manual acks; return the consumer tag.

        C{callback} gets each L{Delivery} and must settle it (ack,
        nack or reject); at most C{prefetch} stay unsettled at once. If it
        returns an awaitable, its failure is logged, nothing more.
        """
        self._check_open()
        tag = f"relay-{next(self._tags)}"
        # Registered first: deliveries may follow consume-ok immediately.
        self._consumers[tag] = callback
        try:
            # qos and consume back to back: one round trip, not two.
            await self._exchange(
                lambda: [
                    self._channel.basic_qos(prefetch_count=prefetch),
                    self._channel.basic_consume(
                        queue=queue, consumer_tag=tag, arguments=dict(arguments or {})
                    ),
                ]
            )
        except BaseException:
            self._consumers.pop(tag, None)
            raise
        return tag

    async def cancel(self, consumer_tag: str) -> None:
        """Stop a consumer; unsettled deliveries may still be settled."""
        self._check_open()
        await self._exchange(lambda: [self._channel.basic_cancel(consumer_tag=consumer_tag)])
        self._consumers.pop(consumer_tag, None)

    def ack(self, delivery_tag: int) -> None:
        """Acknowledge a delivery.

        Acks are sent at the end of the reactor's turn, coalesced: one
        C{basic.ack} with C{multiple} for the longest run of settled
        deliveries from the oldest unsettled one, single acks for those
        behind a delivery still in progress.  An inbox group of 200
        deliveries costs the broker one ack frame, not 200.
        """
        self._check_open()
        if delivery_tag not in self._settled:
            self._settled.add(delivery_tag)
            self._acks.append(delivery_tag)
            if self._flush_call is None:
                self._flush_call = self._clock.callLater(0, self._flush_acks)

    def nack(self, delivery_tag: int, requeue: bool = True) -> None:
        self._check_open()
        self._settle_now(delivery_tag)
        if self._fast is not None:
            self._fast.send_encoded(frames.encode_nack(self._channel.id, delivery_tag, False, requeue))
            return
        self._send(
            self._channel.basic_nack(delivery_tag=delivery_tag, multiple=False, requeue=requeue)
        )

    def reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self._check_open()
        self._settle_now(delivery_tag)
        self._send(self._channel.basic_reject(delivery_tag=delivery_tag, requeue=requeue))

    def _settle_now(self, delivery_tag: int) -> None:
        # Acks waiting for the flush go first: they were settled first.
        self._flush_acks()
        self._settled.add(delivery_tag)

    def _flush_acks(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if self._closed is not None or self._channel.closed:
            return  # the broker requeues them; the inbox knows them by id
        if not self._acks:
            return
        unsettled, settled = self._unsettled, self._settled
        acks, self._acks = set(self._acks), []
        last = None
        while unsettled and unsettled[0] in settled:
            tag = unsettled.popleft()
            settled.discard(tag)
            if tag in acks:
                acks.discard(tag)
                last = tag
        if last is not None:
            # Covers the already-settled ones before it too, which the
            # broker no longer counts; C{last} itself is still outstanding.
            self._send_ack(last, multiple=True)
        for tag in sorted(acks):  # behind a delivery still in progress
            self._send_ack(tag, multiple=False)

    def _send_ack(self, delivery_tag: int, multiple: bool) -> None:
        if self._fast is not None:
            self._fast.send_encoded(frames.encode_ack(self._channel.id, delivery_tag, multiple))
            return
        self._send(self._channel.basic_ack(delivery_tag=delivery_tag, multiple=multiple))

    # -- events from the connection (see LinkService) -------------------------

    def _delivered(self, message: Message) -> None:
        callback = self._consumers.get(message.consumer_tag)
        if callback is None:
            log.warn("delivery for unknown consumer {tag}", tag=message.consumer_tag)
            return
        body, headers, props = _split_properties(message.content)
        self._unsettled.append(message.delivery_tag)
        delivery = Delivery(
            body=body,
            headers=headers,
            properties=props,
            delivery_tag=message.delivery_tag,
            redelivered=bool(message.redelivered),
            exchange=message.exchange,
            routing_key=message.routing_key,
            consumer_tag=message.consumer_tag,
            channel=self,
        )
        result = callback(delivery)
        if isinstance(result, Deferred) or hasattr(result, "__await__"):
            ensureDeferred(result).addErrback(  # type: ignore[arg-type]
                lambda f: log.failure("consumer {tag} failed", f, tag=message.consumer_tag)
            )

    def _returned(self, message: Message) -> None:
        body, headers, props = _split_properties(message.content)
        returned = ReturnedMessage(
            reply_code=message.reply_code,
            reply_text=message.reply_text,
            exchange=message.exchange,
            routing_key=message.routing_key,
            body=body,
            headers=headers,
            properties=props,
        )
        if self.on_return is not None:
            self.on_return(returned)

    def _confirmed(self, delivery_tag: int, multiple: bool, ack: bool) -> None:
        callback = self.on_ack if ack else self.on_nack
        if callback is not None:
            callback(delivery_tag, multiple)

    def _consumer_cancelled(self, consumer_tag: str) -> None:
        self._consumers.pop(consumer_tag, None)
        if self.on_consumer_cancelled is not None:
            self.on_consumer_cancelled(consumer_tag)

    def _lost(self, reason: Failure) -> None:
        if self._closed is None:
            self._closed = reason
            self._consumers.clear()
            if self._flush_call is not None and self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None


class ConfirmTracker:
    """Turns C{on_ack}/C{on_nack} (with C{multiple}) into one result per message.

    C{tracker.attach(channel)}, then C{tracker.expect(channel.publish(...))}
    gives a Deferred that fires C{True} (acked) or C{False} (nacked), or
    fails with L{LinkDown} from L{fail_all}.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, Deferred[bool]] = {}

    def attach(self, channel: Channel) -> None:
        channel.on_ack = self.ack
        channel.on_nack = self.nack

    def expect(self, seq: int) -> Deferred[bool]:
        waiting: Deferred[bool] = Deferred()
        self._waiting[seq] = waiting
        return waiting

    @property
    def outstanding(self) -> int:
        return len(self._waiting)

    def ack(self, seq: int, multiple: bool) -> None:
        self._settle(seq, multiple, True)

    def nack(self, seq: int, multiple: bool) -> None:
        self._settle(seq, multiple, False)

    def fail_all(self, reason: BaseException) -> None:
        waiting, self._waiting = self._waiting, {}
        for deferred in waiting.values():
            deferred.errback(Failure(reason))

    def _settle(self, seq: int, multiple: bool, acked: bool) -> None:
        tags = sorted(t for t in self._waiting if t <= seq) if multiple else [seq]
        for tag in tags:
            deferred = self._waiting.pop(tag, None)
            if deferred is not None:
                deferred.callback(acked)
