"""
The envelope every relay message travels in, and where messages go.

A message is a JSON object on the wire (AMQP body, content type
C{application/json}):

    {"id": "...", "type": "job.submit", "source": "edge:shanghai-1",
     "time": 1764133200.5, "version": 1, "stream": "job:42", "seq": 7,
     "body": {...}}

C{id} is unique per message and is the receiver's deduplication key: a
message published twice (after a lost confirm) has the same id both times.
C{stream} and C{seq} are set for messages that must be applied in order
(the events of one job, the sync events for one edge): C{seq} counts from 1
within the stream.  The catalogue of types is in L{relay.link.catalogue} and
C{docs/messages.md}.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

#: The AMQP header that carries the envelope of a message with a payload.
ENVELOPE_HEADER = "relay-envelope"

#: The content type of a bundle: several envelopes in one AMQP message, one
#: per line (each is compact JSON, which never holds a raw newline).
BUNDLE_TYPE = "application/vnd.relay.bundle"

#: Queue names (durable quorum queues, declared on every connect).
TO_CLOUD = "relay.to-cloud"
JOBS = "relay.jobs"


def to_edge(edge_id: str) -> str:
    """
    The queue an edge consumes.
    """
    return f"relay.to-edge.{edge_id}"


class BadEnvelope(ValueError):
    """
    A delivery is not a relay message (not JSON, or fields missing or of the
    wrong type).  Such a message is dead-lettered with this reason.
    """


@dataclass(frozen=True)
class Envelope:
    """
    One message: routing-independent metadata and a JSON body.
    """

    type: str
    source: str
    time: float
    body: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream: str | None = None
    seq: int | None = None
    #: Binary content beside the JSON body (a chunk of a small file): on the
    #: wire it is the AMQP body, and the envelope travels in the
    #: C{relay-envelope} header.
    payload: bytes | None = field(default=None, repr=False)

    def to_bytes(self) -> bytes:
        """
        The envelope as JSON, without the payload.
        """
        fields = asdict(self)
        del fields["payload"]
        return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, payload: bytes | None = None) -> Envelope:
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BadEnvelope(f"not JSON: {e}") from None
        if not isinstance(raw, dict):
            raise BadEnvelope("not a JSON object")
        for name, kinds in _REQUIRED.items():
            value = raw.get(name)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise BadEnvelope(f"field {name!r} missing or not {kinds[0].__name__}")
        stream, seq = raw.get("stream"), raw.get("seq")
        if (stream is None) != (seq is None):
            raise BadEnvelope("'stream' and 'seq' go together")
        if stream is not None and (
            not isinstance(stream, str) or not isinstance(seq, int) or isinstance(seq, bool) or seq < 1
        ):
            raise BadEnvelope("'stream' must be a string and 'seq' a positive integer")
        unknown = raw.keys() - _FIELDS
        if unknown:
            raise BadEnvelope(f"unknown fields {sorted(unknown)}")
        return cls(
            id=raw["id"],
            type=raw["type"],
            source=raw["source"],
            time=float(raw["time"]),
            version=raw["version"],
            body=raw["body"],
            stream=stream,
            seq=seq,
            payload=payload,
        )


#: The envelope's fields on the wire and the types they must have.
_REQUIRED: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "type": (str,),
    "source": (str,),
    "time": (int, float),
    "version": (int,),
    "body": (dict,),
}
_FIELDS = frozenset({*_REQUIRED, "stream", "seq"})
