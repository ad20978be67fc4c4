"""relay's fixes to txAMQP 0.8.2, in one place.

txAMQP 0.8.2 (2018, the last release) is pinned. Each fix below is a subclass
or a targeted override; nothing in txAMQP is patched globally. Each one has a
regression test in ``tests/link/`` that fails without it.

1. ``no_wait=True`` hangs: ``AMQChannel.invoke`` only skips waiting for a reply
   when a field is named exactly ``nowait``; 0-9-1 calls it ``no-wait``.
   :func:`alias_no_wait` registers the field under both names in a loaded spec.
2. Bodies are decoded as text: a body frame that is valid UTF-8 becomes
   ``str``; a message may then never be delivered (``str`` length is not the
   byte count) or be truncated (a later binary frame replaces the buffer).
   :class:`RelayClient` decodes frames itself, bodies as ``bytes``.
3. The table codec sends only ``str`` and 32-bit ints, miscounts non-ASCII
   strings and cannot read arrays (RabbitMQ's ``x-death``).
   :class:`TableCodec` speaks RabbitMQ's field types, and RelayClient's frame
   codec uses it.
4. The stock delegate has no handler for ``basic.ack``/``basic.nack`` (the first
   publisher confirm closes the connection), ``basic.cancel``,
   ``connection.blocked``/``unblocked``, and advertises no client capabilities
   (so RabbitMQ sends none of those). :class:`RelayDelegate` advertises them and
   routes every broker-initiated method to a :class:`BrokerListener`.
5. Smaller ones in RelayClient: the 0-9-1 protocol header (``AMQP 0 0 9 1``;
   txAMQP sends the 0-9 one); a frame writer that cannot die silently
   (txAMQP's stops sending for good after one encoding error, while its
   heartbeats keep the dead link looking alive); and a lost connection that
   says why (the broker's ``connection.close`` reply, or
   :class:`HeartbeatTimeout`) instead of "closed cleanly" / "aborted".
6. Speed, not correctness: txAMQP sets a timer for every frame received
   and restarts its heartbeat loop for every frame sent; RelayClient notes
   the time instead. The hot frames' short way past txAMQP's generic codec
   and Deferred queues is :mod:`relay.link.fastpath`, which RelayClient
   builds on.
"""

from __future__ import annotations

import calendar
import datetime
import struct
from collections.abc import Mapping, Sequence
from decimal import Decimal
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import ConnectionClosed, TwistedDelegate
from txamqp.codec import Codec
from txamqp.connection import Body, Frame, Header, Heartbeat, Method
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel, GarbageException
from txamqp.queue import TimeoutDeferredQueue
from txamqp.spec import Spec

from relay.link.fastpath import Encoded, FastPathClient

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


# -- 1. no_wait ---------------------------------------------------------------


def alias_no_wait(spec: Spec) -> Spec:
    """Make txAMQP see 0-9-1's ``no-wait`` fields as the ``nowait`` it looks for.

    Only the by-name index of each method's fields gains an entry; field order,
    Python argument names (``no_wait``) and encoding are unchanged. Idempotent.
    """
    for klass in spec.classes:
        for method in klass.methods:
            field = method.fields.byname.get("no-wait")
            if field is not None:
                method.fields.byname.setdefault("nowait", field)
    return spec


# -- 3. tables ----------------------------------------------------------------

_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class TableCodec(Codec):
    """txAMQP's codec with RabbitMQ's field-table types and byte-exact strings.

    Python -> wire: ``None`` V, ``bool`` t, ``int`` I or l (64-bit), ``float``
    d, ``Decimal`` D, ``str`` S, ``bytes`` x, ``datetime`` T (seconds, UTC),
    mappings F, lists and tuples A. Wire -> Python adds b B s u i f (RabbitMQ's
    numeric types); S is ``str`` when it is UTF-8, else ``bytes``.
    """

    def enc_str(self, fmt: str, s: str | bytes) -> None:
        # txAMQP measures the length before encoding: wrong for non-ASCII.
        data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
        if fmt == "!B" and len(data) > 255:
            raise ValueError(f"short string longer than 255 bytes: {data[:32]!r}...")
        self.pack(fmt, len(data))
        self.write(data)

    def encode_table(self, tbl: Mapping[str, Any]) -> None:
        inner = TableCodec(BytesIO())
        for key, value in tbl.items():
            inner.encode_shortstr(key)
            inner.encode_field_value(value)
        data = inner.stream.getvalue()
        self.encode_long(len(data))
        self.write(data)

    def decode_table(self) -> dict[str, Any]:
        data = self.read(self.decode_long())
        inner = TableCodec(BytesIO(data))
        result: dict[str, Any] = {}
        while inner.nread < len(data):
            key = inner.decode_shortstr()
            result[key] = inner.decode_field_value()
        return result

    def encode_field_value(self, value: Any) -> None:
        if value is None:
            self.write(b"V")
        elif isinstance(value, bool):
            self.write(b"t")
            self.encode_octet(1 if value else 0)
        elif isinstance(value, int):
            if value in _INT32:
                self.write(b"I" + struct.pack("!i", value))
            elif value in _INT64:
                self.write(b"l" + struct.pack("!q", value))
            else:
                raise ValueError(f"integer out of 64-bit range: {value}")
        elif isinstance(value, float):
            self.write(b"d" + struct.pack("!d", value))
        elif isinstance(value, Decimal):
            self.write(b"D" + _pack_decimal(value))
        elif isinstance(value, str):
            self.write(b"S")
            self.enc_str("!L", value)
        elif isinstance(value, (bytes, bytearray, memoryview)):
            self.write(b"x")
            self.enc_bytes("!L", bytes(value))
        elif isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.UTC)
            self.write(b"T" + struct.pack("!Q", calendar.timegm(value.utctimetuple())))
        elif isinstance(value, Mapping):
            self.write(b"F")
            self.encode_table(value)
        elif isinstance(value, Sequence):
            inner = TableCodec(BytesIO())
            for item in value:
                inner.encode_field_value(item)
            self.write(b"A")
            self.enc_bytes("!L", inner.stream.getvalue())
        else:
            raise TypeError(f"cannot encode {type(value).__name__} in an AMQP table")

    def decode_field_value(self) -> Any:
        kind = self.read(1)
        simple = _SIMPLE_TYPES.get(kind)
        if simple is not None:
            return self.unpack(simple)
        if kind == b"t":
            return self.decode_octet() != 0
        if kind == b"S":
            return self.dec_str("!L")
        if kind == b"x":
            return self.dec_bytes("!L")
        if kind == b"F":
            return self.decode_table()
        if kind == b"A":
            data = self.dec_bytes("!L")
            inner = TableCodec(BytesIO(data))
            items = []
            while inner.nread < len(data):
                items.append(inner.decode_field_value())
            return items
        if kind == b"D":
            scale = self.decode_octet()
            return Decimal(self.unpack("!i")).scaleb(-scale)
        if kind == b"T":
            return _EPOCH + datetime.timedelta(seconds=self.unpack("!Q"))
        if kind == b"V":
            return None
        raise ValueError(f"unknown AMQP field type {kind!r}")


_SIMPLE_TYPES = {
    b"b": "!b",
    b"B": "!B",
    b"s": "!h",  # RabbitMQ: signed 16-bit (0-9-1's text says short string)
    b"u": "!H",
    b"I": "!i",
    b"i": "!I",
    b"l": "!q",
    b"f": "!f",
    b"d": "!d",
}


def _pack_decimal(value: Decimal) -> bytes:
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"cannot encode {value} as an AMQP decimal")
    unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
    if exponent > 0:
        unscaled, exponent = unscaled * 10**exponent, 0
    if -exponent > 255 or unscaled not in _INT32:
        raise ValueError(f"decimal out of AMQP range: {value}")
    return struct.pack("!Bi", -exponent, unscaled)


def encode_table(table: Mapping[str, Any]) -> bytes:
    """Encode a field table (with its length prefix) the way relay sends it."""
    codec = TableCodec(BytesIO())
    codec.encode_table(table)
    codec.flush()
    return codec.stream.getvalue()


def decode_table(data: bytes) -> dict[str, Any]:
    """Decode what :func:`encode_table` produced."""
    return TableCodec(BytesIO(data)).decode_table()


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
    """Collect a content header and its body frames into one ``bytes`` body."""
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
        """A ``basic.deliver`` with its content (body as ``bytes``)."""

    def returned(self, channel_id: int, message: Message) -> None:
        """A ``basic.return``: a mandatory message that no queue took."""

    def confirmed(self, channel_id: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        """A publisher confirm: ``basic.ack`` (``ack``) or ``basic.nack``."""

    def consumer_cancelled(self, channel_id: int, consumer_tag: str) -> None:
        """The broker ended a consumer (its queue was deleted, for example)."""

    def blocked(self, reason: str) -> None:
        """``connection.blocked``: the broker stopped reading our publishes."""

    def unblocked(self) -> None:
        """``connection.unblocked``."""

    def channel_closed(self, channel_id: int, reason: Failure) -> None:
        """A channel was closed by the broker (a channel-level error)."""

    def connection_lost(self, reason: Failure) -> None:
        """The TCP connection ended, for whatever reason."""


class RelayDelegate(TwistedDelegate):
    """txAMQP's delegate, with client capabilities and every broker-initiated
    method relay needs routed to a :class:`BrokerListener`.
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

    Construct with a :class:`RelayDelegate` and pass the reactor as ``clock``.
    The hot frames bypass txAMQP's generic machinery: see
    :class:`relay.link.fastpath.FastPathClient`, which this builds on.
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
