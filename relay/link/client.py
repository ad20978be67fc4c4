"""relay's AMQP client: txAMQP 0.8.2's, with relay's fixes in one place.

txAMQP 0.8.2 (2018, the last release) is pinned. Each fix below is a subclass
or a targeted override; nothing in txAMQP is patched globally. Each one has a
regression test in C{tests/link/} that fails without it.

1. C{no_wait=True} hangs: C{AMQChannel.invoke} only skips waiting for a reply
   when a field is named exactly C{nowait}; 0-9-1 calls it C{no-wait}.
   L{relay.link.spec.alias_no_wait} registers the field under both names
   in the loaded spec.
2. Bodies are decoded as text: a body frame that is valid UTF-8 becomes
   C{str}; a message may then never be delivered (C{str} length is not the
   byte count) or be truncated (a later binary frame replaces the buffer).
   L{RelayClient} decodes frames itself, bodies as C{bytes}.
3. The table codec sends only C{str} and 32-bit ints, miscounts non-ASCII
   strings and cannot read arrays (RabbitMQ's C{x-death}).
   L{relay.link.tables.TableCodec} speaks RabbitMQ's field types, and
   RelayClient's frame codec uses it.
4. The stock delegate has no handler for C{basic.ack}/C{basic.nack} (the first
   publisher confirm closes the connection), C{basic.cancel},
   C{connection.blocked}/C{unblocked}, and advertises no client capabilities
   (so RabbitMQ sends none of those). L{RelayDelegate} advertises them and
   routes every broker-initiated method to a L{BrokerListener}.
5. Smaller ones in RelayClient: the 0-9-1 protocol header (C{AMQP 0 0 9 1};
   txAMQP sends the 0-9 one); a frame writer that cannot die silently
   (txAMQP's stops sending for good after one encoding error, while its
   heartbeats keep the dead link looking alive); and a lost connection that
   says why (the broker's C{connection.close} reply, or
   L{HeartbeatTimeout}) instead of "closed cleanly" / "aborted".
6. Speed, not correctness: txAMQP sets a timer for every frame received
   and restarts its heartbeat loop for every frame sent; RelayClient notes
   the time instead. The hot frames' short way past txAMQP's generic codec
   and Deferred queues is L{relay.link.fastpath}, which RelayClient
   builds on.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import ConnectionClosed, TwistedDelegate
from txamqp.connection import Body, Frame, Header, Heartbeat, Method
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel, GarbageException
from txamqp.queue import TimeoutDeferredQueue
from txamqp.spec import Spec

from relay.link.fastpath import Encoded, FastPathClient
from relay.link.tables import TableCodec

log = Logger()

class HeartbeatTimeout(Exception):
    """The broker sent nothing for three heartbeat intervals: the link is stalled."""


PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

# What relay's client understands; RabbitMQ sends consumer cancels,
# connection.blocked and an explicit auth-failure close only when advertised.
CLIENT_CAPABILITIES: dict[str, bool] = {
    "publisher_confirms": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "basic.nack": True,
    "authentication_failure_close": True,
}


# -- 2. frames, with bodies as bytes ------------------------------------------


def encode_payload(payload: Any) -> bytes:
    """The bytes of one frame payload (method, content header, body, heartbeat)."""
    if isinstance(payload, Body):
        body = payload.content
        return body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if isinstance(payload, Heartbeat):
        return b""
    codec = TableCodec(BytesIO())
    if isinstance(payload, Method):
        codec.encode_short(payload.method.klass.id)
        codec.encode_short(payload.method.id)
        for field, arg in zip(payload.method.fields, payload.args, strict=True):
            codec.encode(field.type, arg)
    elif isinstance(payload, Header):
        fields = list(payload.klass.fields)
        unknown = set(payload.properties) - {f.name for f in fields}
        if unknown:
            raise ValueError(f"unknown message properties: {sorted(unknown)}")
        codec.encode_short(payload.klass.id)
        codec.encode_short(payload.weight)
        codec.encode_longlong(payload.size)
        # 15 presence bits per flag word; the lowest bit says another follows.
        for start in range(0, max(len(fields), 1), 15):
            word = 0
            for i, field in enumerate(fields[start : start + 15]):
                if payload.properties.get(field.name) is not None:
                    word |= 1 << (15 - i)
            if start + 15 < len(fields):
                word |= 1
            codec.encode_short(word)
        for field in fields:
            value = payload.properties.get(field.name)
            if value is not None:
                codec.encode(field.type, value)
    else:
        raise TypeError(f"cannot encode frame payload {payload!r}")
    codec.flush()
    return codec.stream.getvalue()


def decode_method(spec: Spec, data: bytes) -> Method:
    codec = TableCodec(BytesIO(data))
    klass = spec.classes.byid[codec.decode_short()]
    method = klass.methods.byid[codec.decode_short()]
    args = []
    for field in method.fields:
        if field.type != "bit":
            # Bits pack only with adjacent bits; txAMQP would reuse leftovers.
            codec.incoming_bits.clear()
        args.append(codec.decode(field.type))
    return Method(method, *args)


def decode_header(spec: Spec, data: bytes) -> Header:
    codec = TableCodec(BytesIO(data))
    klass = spec.classes.byid[codec.decode_short()]
    weight = codec.decode_short()
    size = codec.decode_longlong()
    present: list[bool] = []
    while True:
        word = codec.decode_short()
        present.extend(bool(word >> (15 - i) & 1) for i in range(15))
        if not word & 1:
            break
    properties = {
        field.name: codec.decode(field.type)
        for field, there in zip(klass.fields, present, strict=False)
        if there
    }
    return Header(klass, weight, size, **properties)


async def read_content(queue: TimeoutDeferredQueue) -> Content:
    """Collect a content header and its body frames into one C{bytes} body."""
    header = (await queue.get()).payload
    children = [await read_content(queue) for _ in range(header.weight)]
    chunks: list[bytes] = []
    received = 0
    while received < header.size:
        chunk = (await queue.get()).payload.content
        chunks.append(chunk)
        received += len(chunk)
    return Content(b"".join(chunks), children, dict(header.properties))


# -- 4. the delegate ----------------------------------------------------------


class BrokerListener:
    """What the broker says on its own initiative, handed to relay's link layer.

    Subclass and override; every method here ignores the event. Exceptions
    raised by an override are logged and do not affect the connection.
    """

    def delivered(self, channel_id: int, message: Message) -> None:
        """A C{basic.deliver} with its content (body as C{bytes})."""

    def returned(self, channel_id: int, message: Message) -> None:
        """A C{basic.return}: a mandatory message that no queue took."""

    def confirmed(self, channel_id: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        """A publisher confirm: C{basic.ack} (C{ack}) or C{basic.nack}."""

    def consumer_cancelled(self, channel_id: int, consumer_tag: str) -> None:
        """The broker ended a consumer (its queue was deleted, for example)."""

    def blocked(self, reason: str) -> None:
        """C{connection.blocked}: the broker stopped reading our publishes."""

    def unblocked(self) -> None:
        """C{connection.unblocked}."""

    def channel_closed(self, channel_id: int, reason: Failure) -> None:
        """A channel was closed by the broker (a channel-level error)."""

    def connection_lost(self, reason: Failure) -> None:
        """The TCP connection ended, for whatever reason."""


class RelayDelegate(TwistedDelegate):
    """txAMQP's delegate, with client capabilities and every broker-initiated
    method relay needs routed to a L{BrokerListener}.
    """

    def __init__(self, listener: BrokerListener, client_properties: Mapping[str, Any]) -> None:
        super().__init__()
        self.listener = listener
        self.client_properties = dict(client_properties)

    def connection_start(self, ch: AMQChannel, msg: Message) -> None:
        ch.connection_start_ok(
            client_properties=self.client_properties,
            mechanism=self.client.mechanism,
            response=self.client.response,
            locale=self.client.locale,
        )

    def basic_deliver(self, ch: AMQChannel, msg: Message) -> None:
        self._notify(self.listener.delivered, ch.id, msg)

    def basic_return_(self, ch: AMQChannel, msg: Message) -> None:
        self._notify(self.listener.returned, ch.id, msg)

    def basic_ack(self, ch: AMQChannel, msg: Message) -> None:
        self._notify(self.listener.confirmed, ch.id, msg.delivery_tag, msg.multiple, True)

    def basic_nack(self, ch: AMQChannel, msg: Message) -> None:
        self._notify(self.listener.confirmed, ch.id, msg.delivery_tag, msg.multiple, False)

    def basic_cancel(self, ch: AMQChannel, msg: Message) -> None:
        if not msg.no_wait:
            ch.basic_cancel_ok(consumer_tag=msg.consumer_tag).addErrback(lambda _: None)
        self._notify(self.listener.consumer_cancelled, ch.id, msg.consumer_tag)

    def connection_close(self, ch: AMQChannel, msg: Message) -> None:
        # Remembered so connection_lost can say why (e.g. 320 CONNECTION_FORCED)
        # instead of a bare "closed cleanly".
        self.client.close_reason = Failure(ConnectionClosed(msg))
        super().connection_close(ch, msg)

    def connection_blocked(self, ch: AMQChannel, msg: Message) -> None:
        self._notify(self.listener.blocked, msg.reason)

    def connection_unblocked(self, ch: AMQChannel, msg: Message) -> None:
        self._notify(self.listener.unblocked)

    def _notify(self, handler: Any, *args: Any) -> None:
        # An exception escaping a delegate method makes txAMQP close the
        # whole connection: contain the listener's.
        try:
            handler(*args)
        except Exception:
            log.failure("link listener {handler} failed", handler=handler.__name__)


# -- 2 and 5. the protocol ----------------------------------------------------


class RelayClient(FastPathClient):
    """txAMQP's client with relay's frame codec, bytes bodies and listener hooks.

    Construct with a L{RelayDelegate} and pass the reactor as C{clock}.
    The hot frames bypass txAMQP's generic machinery: see
    L{relay.link.fastpath.FastPathClient}, which this builds on.
    """

    checkHB: IDelayedCall  # set by txAMQP when heartbeats are on

    def __init__(
        self,
        delegate: RelayDelegate,
        vhost: str,
        spec: Spec,
        heartbeat: int = 0,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(delegate, vhost, spec, heartbeat=heartbeat, clock=clock)
        # Why the connection ended, when we know better than the transport.
        self.close_reason: Failure | None = None
        ids = spec.constants.bypyname
        self._frame_ids = {kind: ids[kind].id for kind in _FRAME_KINDS}
        self._frame_kinds = {ids[kind].id: kind for kind in _FRAME_KINDS}
        self._last_seen = self.clock.seconds()

    def send_init_string(self) -> None:
        self.transport.write(PROTOCOL_HEADER)

    # -- sending --------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        # txAMQP restarts its heartbeat LoopingCall on every frame sent (a
        # tenth of the edge's time when publishing); relay's heartbeats go
        # out every interval regardless, which the protocol allows.
        self.transport.write(self._pack_frame(frame))

    def _pack_frame(self, frame: Frame | Encoded) -> bytes:
        if isinstance(frame, Encoded):
            return frame.data
        payload = encode_payload(frame.payload)
        kind = self._frame_ids[frame.payload.type]
        header = struct.pack("!BHI", kind, frame.channel, len(payload))
        return header + payload + bytes([self.FRAME_END])

    # -- receiving ------------------------------------------------------------

    def _decode_frame(self, kind_id: int, channel: int, payload: bytes) -> Frame:
        kind = self._frame_kinds.get(kind_id)
        if kind == Frame.METHOD:
            return Frame(channel, decode_method(self.spec, payload))
        if kind == Frame.HEADER:
            return Frame(channel, decode_header(self.spec, payload))
        if kind == Frame.BODY:
            return Frame(channel, Body(payload))
        if kind == Frame.HEARTBEAT:
            return Frame(channel, Heartbeat())
        raise GarbageException(f"frame error: unknown frame type {kind_id}")

    def dispatch(self, queue: TimeoutDeferredQueue) -> Deferred[None]:
        return Deferred.fromCoroutine(self._dispatch(queue))

    async def _dispatch(self, queue: TimeoutDeferredQueue) -> None:
        frame = await queue.get()
        channel = await self.channel(frame.channel)
        method = frame.payload.method
        content = await read_content(queue) if method.content else None
        self.delegate.dispatch(channel, Message(method, frame.payload.args, content))

    def writer(self, frame: Frame | Encoded) -> None:
        try:
            self.send_frame(frame)  # type: ignore[arg-type]
        except Exception:
            # txAMQP would stop writing forever; drop the link instead so it
            # is rebuilt, and keep the writer loop alive meanwhile.
            log.failure("cannot send AMQP frame; dropping the connection")
            if self.transport is not None:
                self.transport.abortConnection()
        finally:
            self.outgoing.get().addCallback(self.writer)

    def channel_failed(self, channel: AMQChannel, reason: Failure) -> None:
        self.delegate._notify(self.delegate.listener.channel_closed, channel.id, reason)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.delegate._notify(self.delegate.listener.connection_lost, self.close_reason or reason)

    def reschedule_check_heartbeat(self) -> None:
        # txAMQP cancels and sets a timer for every frame received; relay
        # notes the time and lets one timer look again when it fires.
        self._last_seen = self.clock.seconds()
        if not self.checkHB.active():
            self.checkHB = self.clock.callLater(self._silence_limit(), self.check_heartbeat)

    def _silence_limit(self) -> float:
        return float(self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT)

    def check_heartbeat(self) -> None:
        silent = self._silence_limit()
        quiet_for = self.clock.seconds() - self._last_seen
        if quiet_for < silent:
            self.checkHB = self.clock.callLater(silent - quiet_for, self.check_heartbeat)
            return
        self.close_reason = Failure(HeartbeatTimeout(f"no frame from the broker for {silent}s"))
        super().check_heartbeat()


_FRAME_KINDS = (Frame.METHOD, Frame.HEADER, Frame.BODY, Frame.HEARTBEAT)
