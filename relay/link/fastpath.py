"""The client side of the hot frames' fast path.

txAMQP hands every frame it receives through two Deferred queues and a
generic per-field decoder, and copies the rest of its read buffer after each
frame; it encodes every frame it sends the same generic way.  That was most
of relay's link CPU (see bench/link.py C{--profile}).  L{FastPathClient}
takes the frames relay sends and receives most a shorter way:

- L{FastPathClient.send_encoded} writes frames already encoded by
  L{relay.link.frames} (C{basic.publish} with its content,
  C{basic.ack}/C{nack}), behind any frame txAMQP has queued;
- incoming data is parsed in place, and C{basic.deliver}/C{basic.return}
  with their content and C{basic.ack}/C{basic.nack} (publisher confirms)
  go straight to the delegate.

Everything else goes txAMQP's way.  The fast path is taken only while
txAMQP's dispatcher is idle, so the delegate still sees every method in
arrival order.  The codecs are byte-exact with the generic path
(C{tests/link/test_frames.py}).  relay's fixes to txAMQP
(L{relay.link.client.RelayClient}) build on this class.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from txamqp.client import TwistedDelegate
from txamqp.connection import Frame
from txamqp.content import Content
from txamqp.message import Message
from txamqp.protocol import AMQChannel, AMQClient, GarbageException
from txamqp.spec import Spec

from relay.link import frames

_FRAME_HEAD = struct.Struct("!BHI")


class Encoded:
    """Frames already encoded by L{relay.link.frames}, queued behind others."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Incoming:
    """A C{basic.deliver} or C{basic.return} whose content is arriving."""

    __slots__ = ("channel", "method", "args", "size", "properties", "chunks", "received")

    def __init__(self, channel: AMQChannel, method: Any, args: tuple[Any, ...]) -> None:
        self.channel = channel
        self.method = method
        self.args = args
        self.size = -1  # until the content header arrives
        self.properties: dict[str, Any] = {}
        self.chunks: list[bytes] = []
        self.received = 0


class FastPathClient(AMQClient):
    """txAMQP's client with the hot frames taken the short way.

    A subclass provides L{_decode_frame} (the generic decoder, for the
    frames the fast path leaves to txAMQP) and writes L{Encoded} items
    that reach txAMQP's writer queue as their bytes.
    """

    def __init__(
        self,
        delegate: TwistedDelegate,
        vhost: str,
        spec: Spec,
        heartbeat: int = 0,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__(delegate, vhost, spec, heartbeat=heartbeat, clock=clock)
        basic = spec.classes.byname["basic"]
        self._fast_methods = {
            frames.BASIC_DELIVER: basic.methods.byname["deliver"],
            frames.BASIC_RETURN: basic.methods.byname["return"],
            frames.BASIC_ACK: basic.methods.byname["ack"],
            frames.BASIC_NACK: basic.methods.byname["nack"],
        }
        self._received = bytearray()
        self._incoming: dict[int, _Incoming] = {}

    def _decode_frame(self, kind_id: int, channel: int, payload: bytes) -> Frame:
        """One frame the fast path does not take, decoded for txAMQP."""
        raise NotImplementedError

    # -- sending --------------------------------------------------------------

    def send_encoded(self, data: bytes) -> None:
        """Send frames encoded by L{relay.link.frames}, after any frame
        txAMQP has queued but not yet written."""
        outgoing = self.outgoing
        if outgoing.waiting and not outgoing.pending:
            self.transport.write(data)  # the writer is idle: nothing queued
        else:
            outgoing.put(Encoded(data))

    # -- receiving ------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # txAMQP copies the rest of its buffer after every frame; this
        # parses in place and trims once per read.
        if not self.frame_mode:
            return super().dataReceived(data)  # type: ignore[no-any-return]
        buffer = self._received
        buffer += data
        offset, available = 0, len(buffer)
        try:
            while available - offset >= 8 and not self.paused:
                kind, channel, size = _FRAME_HEAD.unpack_from(buffer, offset)
                end = offset + 7 + size
                if end >= available:
                    break
                if buffer[end] != frames.FRAME_END:
                    raise GarbageException(f"frame error: bad frame end {buffer[end]!r}")
                payload = bytes(buffer[offset + 7 : end])
                offset = end + 1
                self._frame(kind, channel, payload)
                if self.transport is not None and self.transport.disconnecting:
                    break
        finally:
            del buffer[:offset]
        return None

    def _frame(self, kind: int, channel: int, payload: bytes) -> None:
        incoming = self._incoming.get(channel)
        if incoming is not None:
            self._content_frame(incoming, kind, channel, payload)
        elif kind == frames.FRAME_METHOD and payload[:4] in self._fast_methods and self._dispatcher_idle():
            ch = self.channels.get(channel)
            if ch is None or ch.closed:
                self.frame_received(self._decode_frame(kind, channel, payload))
                return
            head = payload[:4]
            method = self._fast_methods[head]
            if head == frames.BASIC_DELIVER:
                self._incoming[channel] = _Incoming(ch, method, frames.decode_deliver(payload))
            elif head == frames.BASIC_RETURN:
                self._incoming[channel] = _Incoming(ch, method, frames.decode_return(payload))
            elif head == frames.BASIC_ACK:
                self._deliver_message(ch, Message(method, frames.decode_ack(payload)))
            else:
                self._deliver_message(ch, Message(method, frames.decode_nack(payload)))
        else:
            self.frame_received(self._decode_frame(kind, channel, payload))
            return
        if self.heartbeatInterval > 0 and not self.closed:
            self.reschedule_check_heartbeat()

    def _dispatcher_idle(self) -> bool:
        # txAMQP's worker waits for work and none is queued: every method
        # received so far has reached the delegate.
        return bool(self.work.waiting) and not self.work.pending

    def _content_frame(self, incoming: _Incoming, kind: int, channel: int, payload: bytes) -> None:
        if incoming.size < 0:
            if kind != frames.FRAME_HEADER:
                raise GarbageException(f"frame error: expected a content header on channel {channel}")
            weight, incoming.size, incoming.properties = frames.decode_content_header(payload)
            if weight:
                raise GarbageException("frame error: basic content cannot have children")
        elif kind == frames.FRAME_BODY:
            incoming.chunks.append(payload)
            incoming.received += len(payload)
        else:
            raise GarbageException(f"frame error: expected a body frame on channel {channel}")
        if incoming.received >= incoming.size:
            del self._incoming[channel]
            body = incoming.chunks[0] if len(incoming.chunks) == 1 else b"".join(incoming.chunks)
            content = Content(body, [], incoming.properties)
            self._deliver_message(incoming.channel, Message(incoming.method, incoming.args, content))

    def _deliver_message(self, channel: AMQChannel, message: Message) -> None:
        try:
            self.delegate.dispatch(channel, message)
        except Exception:
            # What txAMQP's worker does with a delegate's exception.
            self.close(Failure())
