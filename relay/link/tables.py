"""
AMQP field tables (message headers, method arguments) as RabbitMQ speaks them.

txAMQP 0.8.2's table codec sends only strings and 32-bit ints, miscounts
non-ASCII strings and cannot read arrays (RabbitMQ's C{x-death} header, which
then kills the connection).  L{TableCodec} is its codec with RabbitMQ's field
types; the client's generic frame codec (L{relay.link.client}) and the hot
frames' codecs (L{relay.link.frames}) both use it.
"""

from __future__ import annotations

import calendar
import datetime
import struct
from collections.abc import Mapping, Sequence
from decimal import Decimal
from io import BytesIO
from typing import Any

from txamqp.codec import Codec

_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class TableCodec(Codec):
    """
    txAMQP's codec with RabbitMQ's field-table types and byte-exact strings.

    Python -> wire: C{None} V, C{bool} t, C{int} I or l (64-bit), C{float}
    d, C{Decimal} D, C{str} S, C{bytes} x, C{datetime} T (seconds, UTC),
    mappings F, lists and tuples A. Wire -> Python adds b B s u i f (RabbitMQ's
    numeric types); S is C{str} when it is UTF-8, else C{bytes}.
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
    """
    Encode a field table (with its length prefix) the way relay sends it.
    """
    codec = TableCodec(BytesIO())
    codec.encode_table(table)
    codec.flush()
    return codec.stream.getvalue()


def decode_table(data: bytes) -> dict[str, Any]:
    """
    Decode what L{encode_table} produced.
    """
    return TableCodec(BytesIO(data)).decode_table()
