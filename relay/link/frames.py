"""Hand-written codecs for the AMQP frames relay sends and receives most.

txAMQP encodes and decodes every frame field by field through a generic
codec (a BytesIO, a C{getattr} and a C{struct} call per field), and hands
each frame through two Deferred queues. That cost most of the edge's reactor
when publishing and half the cloud's when consuming (see bench/link.py
C{--profile}). The hot frames are few and fixed, so they are packed and
unpacked here with precompiled C{struct} formats:

- C{basic.publish} with its content header and body frames (sending);
- C{basic.ack} / C{basic.nack} (sending settlements, receiving confirms);
- C{basic.deliver} and C{basic.return} with their content (receiving).

Every function here produces or reads exactly the bytes of txAMQP's generic
path with relay's fixes (L{relay.link.client.encode_payload},
L{relay.link.client.decode_method}, L{relay.link.client.decode_header});
C{tests/link/test_frames.py} checks that byte for byte. The property list
is AMQP 0-9-1's, checked against relay's protocol definition by the same
tests.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from io import BytesIO
from typing import Any

from relay.link.tables import TableCodec, encode_table

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"

BASIC = 60
PUBLISH = 40
RETURN = 50
DELIVER = 60
ACK = 80
NACK = 120

#: Method ids as the first four bytes of a method frame's payload.
BASIC_DELIVER = struct.pack("!HH", BASIC, DELIVER)
BASIC_RETURN = struct.pack("!HH", BASIC, RETURN)
BASIC_ACK = struct.pack("!HH", BASIC, ACK)
BASIC_NACK = struct.pack("!HH", BASIC, NACK)

#: basic's content properties, in wire order, with their field types.
BASIC_PROPERTIES: tuple[tuple[str, str], ...] = (
    ("content-type", "shortstr"),
    ("content-encoding", "shortstr"),
    ("headers", "table"),
    ("delivery-mode", "octet"),
    ("priority", "octet"),
    ("correlation-id", "shortstr"),
    ("reply-to", "shortstr"),
    ("expiration", "shortstr"),
    ("message-id", "shortstr"),
    ("timestamp", "timestamp"),
    ("type", "shortstr"),
    ("user-id", "shortstr"),
    ("app-id", "shortstr"),
    ("cluster-id", "shortstr"),
)
_PROPERTY_NAMES = frozenset(name for name, _ in BASIC_PROPERTIES)
# Presence flag of each property: bit 15 for the first, downwards.
_FLAGS = tuple((name, kind, 1 << (15 - i)) for i, (name, kind) in enumerate(BASIC_PROPERTIES))

_FRAME_HEAD = struct.Struct("!BHI")
_METHOD_ID = struct.Struct("!HH")
_PUBLISH_HEAD = struct.Struct("!BHIHHH")  # frame head, class, method, ticket
_CONTENT_HEADER = struct.Struct("!BHIHHQH")  # frame head, class, weight, size, flags
_ACK = struct.Struct("!BHIHHQB")  # frame head, class, method, tag, bits
_ACK_FRAME_SIZE = _ACK.size - 7
_B = struct.Struct("!B")
_H = struct.Struct("!H")
_L = struct.Struct("!L")
_Q = struct.Struct("!Q")


def _shortstr(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if len(data) > 255:
        raise ValueError(f"short string longer than 255 bytes: {data[:32]!r}...")
    return _B.pack(len(data)) + data


def encode_properties(properties: Mapping[str, Any]) -> tuple[int, bytes]:
    """The presence flags and the encoded values of basic's content properties
    (keyed by their wire names, C{content-type} and so on; C{None} is absent).
    """
    unknown = set(properties) - _PROPERTY_NAMES
    if unknown:
        raise ValueError(f"unknown message properties: {sorted(unknown)}")
    flags = 0
    parts: list[bytes] = []
    for name, kind, flag in _FLAGS:
        value = properties.get(name)
        if value is None:
            continue
        flags |= flag
        if kind == "shortstr":
            parts.append(_shortstr(value))
        elif kind == "octet":
            parts.append(_B.pack(value))
        elif kind == "timestamp":
            parts.append(_Q.pack(value))
        else:
            parts.append(encode_table(value))
    return flags, b"".join(parts)


def encode_publish(
    channel: int,
    exchange: str,
    routing_key: str,
    body: bytes,
    properties: Mapping[str, Any],
    *,
    frame_max: int,
    mandatory: bool = False,
    immediate: bool = False,
) -> bytes:
    """The frames of one C{basic.publish}: method, content header, and the
    body cut into frames of at most C{frame_max} bytes (none for an empty
    body), as one string of bytes.
    """
    exchange_b = _shortstr(exchange)
    routing_b = _shortstr(routing_key)
    method_size = 6 + len(exchange_b) + len(routing_b) + 1
    flags, props = encode_properties(properties)
    size = len(body)
    parts: list[bytes | memoryview] = [
        _PUBLISH_HEAD.pack(FRAME_METHOD, channel, method_size, BASIC, PUBLISH, 0),
        exchange_b,
        routing_b,
        _B.pack(int(mandatory) | int(immediate) << 1),
        FRAME_END_BYTE,
        _CONTENT_HEADER.pack(FRAME_HEADER, channel, 14 + len(props), BASIC, 0, size, flags),
        props,
        FRAME_END_BYTE,
    ]
    room = frame_max - 8
    if room <= 0:
        raise ValueError(f"frame_max too small: {frame_max}")
    if size <= room:
        if size:
            parts += (_FRAME_HEAD.pack(FRAME_BODY, channel, size), body, FRAME_END_BYTE)
    else:
        view = memoryview(body)
        for start in range(0, size, room):
            chunk = view[start : start + room]
            parts += (_FRAME_HEAD.pack(FRAME_BODY, channel, len(chunk)), chunk, FRAME_END_BYTE)
    return b"".join(parts)


def encode_ack(channel: int, delivery_tag: int, multiple: bool = False) -> bytes:
    """One C{basic.ack} method frame."""
    return _ACK.pack(FRAME_METHOD, channel, _ACK_FRAME_SIZE, BASIC, ACK, delivery_tag, int(multiple)) + FRAME_END_BYTE


def encode_nack(channel: int, delivery_tag: int, multiple: bool = False, requeue: bool = True) -> bytes:
    """One C{basic.nack} method frame."""
    bits = int(multiple) | int(requeue) << 1
    return _ACK.pack(FRAME_METHOD, channel, _ACK_FRAME_SIZE, BASIC, NACK, delivery_tag, bits) + FRAME_END_BYTE


# -- decoding -------------------------------------------------------------------------


def _text(data: bytes) -> str | bytes:
    # As txAMQP's codec: text when it is UTF-8, else the bytes.
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def _read_shortstr(data: bytes, offset: int) -> tuple[str | bytes, int]:
    end = offset + 1 + data[offset]
    if end > len(data):
        raise ValueError("short string runs past the end of the frame")
    return _text(data[offset + 1 : end]), end


def decode_deliver(payload: bytes) -> tuple[str | bytes, int, bool, str | bytes, str | bytes]:
    """The arguments of a C{basic.deliver} method frame's payload: consumer
    tag, delivery tag, redelivered, exchange, routing key.
    """
    consumer_tag, offset = _read_shortstr(payload, 4)
    (delivery_tag,) = _Q.unpack_from(payload, offset)
    redelivered = bool(payload[offset + 8] & 1)
    exchange, offset = _read_shortstr(payload, offset + 9)
    routing_key, offset = _read_shortstr(payload, offset)
    return consumer_tag, delivery_tag, redelivered, exchange, routing_key


def decode_return(payload: bytes) -> tuple[int, str | bytes, str | bytes, str | bytes]:
    """The arguments of a C{basic.return}: reply code and text, exchange, routing key."""
    (reply_code,) = _H.unpack_from(payload, 4)
    reply_text, offset = _read_shortstr(payload, 6)
    exchange, offset = _read_shortstr(payload, offset)
    routing_key, offset = _read_shortstr(payload, offset)
    return reply_code, reply_text, exchange, routing_key


def decode_ack(payload: bytes) -> tuple[int, bool]:
    """The arguments of a C{basic.ack}: delivery tag, multiple."""
    (delivery_tag,) = _Q.unpack_from(payload, 4)
    return delivery_tag, bool(payload[12] & 1)


def decode_nack(payload: bytes) -> tuple[int, bool, bool]:
    """The arguments of a C{basic.nack}: delivery tag, multiple, requeue."""
    (delivery_tag,) = _Q.unpack_from(payload, 4)
    bits = payload[12]
    return delivery_tag, bool(bits & 1), bool(bits & 2)


def decode_content_header(payload: bytes) -> tuple[int, int, dict[str, Any]]:
    """A basic content header: weight, body size and the properties by wire name."""
    _, weight, size = struct.unpack_from("!HHQ", payload)
    offset = 12
    present: list[bool] = []
    while True:
        (word,) = _H.unpack_from(payload, offset)
        offset += 2
        present.extend(bool(word >> (15 - i) & 1) for i in range(15))
        if not word & 1:
            break
    properties: dict[str, Any] = {}
    for (name, kind), there in zip(BASIC_PROPERTIES, present, strict=False):
        if not there:
            continue
        if kind == "shortstr":
            properties[name], offset = _read_shortstr(payload, offset)
        elif kind == "octet":
            properties[name] = payload[offset]
            offset += 1
        elif kind == "timestamp":
            (properties[name],) = _Q.unpack_from(payload, offset)
            offset += 8
        else:
            (length,) = _L.unpack_from(payload, offset)
            end = offset + 4 + length
            if end > len(payload):
                raise ValueError("table runs past the end of the frame")
            properties[name] = TableCodec(BytesIO(payload[offset:end])).decode_table()
            offset = end
    return weight, size, properties

