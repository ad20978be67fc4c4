"""
The tus 1.0 protocol, apart from any transport and from either server: the
headers relay reads and writes, how each is parsed, and the error every
malformed one gets.  Used by the edge's upload receiver
(L{relay.edge.uploads}), the cloud's transfer receiver
(L{relay.cloud.receiver}) and the edge's transfer client
(L{relay.edge.transfer.tus_client}).

Everything here is a plain function or value; a route feeds it header
values and turns a L{TusError} into a response.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from relay.text import bad_text

VERSION = "1.0.0"
#: Checksum algorithms by their tus names (sha1 is required by the spec).
CHECKSUM_ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

#: Status codes tus adds to HTTP's.
CHECKSUM_MISMATCH = 460

_INTEGER = re.compile(r"[0-9]{1,19}\Z")
_METADATA_KEY = re.compile(r"[\x21-\x7e]+\Z")


class TusError(Exception):
    """
    A request relay refuses, with the status code the tus spec names and a
    message for the person behind the client.  Nothing has been changed.
    """

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def check_version(value: str | None) -> None:
    """Every request but OPTIONS must name the protocol version relay speaks."""
    if value is None:
        raise TusError(412, "missing Tus-Resumable header: this is a tus 1.0.0 server",
                       {"Tus-Version": VERSION})
    if value.strip() != VERSION:
        raise TusError(412, f"unsupported tus version {value!r}; this server speaks {VERSION}",
                       {"Tus-Version": VERSION})


def parse_integer(name: str, value: str) -> int:
    """A non-negative decimal header value."""
    value = value.strip()
    if not _INTEGER.match(value):
        raise TusError(400, f"{name} must be a non-negative integer, got {value[:40]!r}")
    return int(value)


@dataclass(frozen=True)
class Creation:
    """What a creation request (POST) asks for."""

    #: Total size, or C{None} when deferred (C{Upload-Defer-Length: 1}).
    length: int | None
    #: The raw C{Upload-Metadata} value, echoed on HEAD.
    raw_metadata: str
    metadata: Mapping[str, bytes]
    #: C{"partial"}, C{"final"} or C{None}.
    concat: str | None
    #: For a final upload: the URLs (or paths) of its parts, in order.
    parts: tuple[str, ...]


def parse_creation(
    length: str | None, defer: str | None, metadata: str | None, concat: str | None,
    text_keys: Iterable[str] = (),
) -> Creation:
    """
    Parse and check the headers of a creation request; the metadata values
    of C{text_keys} must be valid text (L{check_text}).
    """
    kind, parts = parse_concat(concat)
    if kind == "final":
        if length is not None or defer is not None:
            raise TusError(400, "a final upload (Upload-Concat: final) must not carry "
                                "Upload-Length or Upload-Defer-Length")
        size = None
    elif length is not None and defer is not None:
        raise TusError(400, "send either Upload-Length or Upload-Defer-Length, not both")
    elif length is not None:
        size = parse_integer("Upload-Length", length)
    elif defer is not None:
        if defer.strip() != "1":
            raise TusError(400, "Upload-Defer-Length must be 1")
        size = None
    else:
        raise TusError(400, "Upload-Length or Upload-Defer-Length: 1 is required")
    raw = (metadata or "").strip()
    parsed = parse_metadata(raw)
    for key in text_keys:
        check_text(key, parsed.get(key))
    return Creation(size, raw, parsed, kind, parts)


def check_text(key: str, value: bytes | None) -> None:
    """Refuse a metadata value that is not valid text (400)."""
    if value is None:
        return
    try:
        decoded = value.decode("utf-8")
    except UnicodeDecodeError:
        raise TusError(400, f"Upload-Metadata {key} must be UTF-8 text") from None
    if bad_text(decoded) is not None:
        raise TusError(400, f"Upload-Metadata {key} must be valid Unicode text "
                            "(no surrogates or non-characters)")


def parse_metadata(value: str) -> dict[str, bytes]:
    """
    C{Upload-Metadata}: comma-separated pairs of an ASCII key and an optional
    base64 value; keys are unique.
    """
    result: dict[str, bytes] = {}
    if not value.strip():
        return result
    for item in value.split(","):
        pieces = item.strip().split(" ")
        if not pieces[0] or len(pieces) > 2 or not _METADATA_KEY.match(pieces[0]):
            raise TusError(400, f"malformed Upload-Metadata entry {item.strip()[:60]!r}")
        key = pieces[0]
        if key in result:
            raise TusError(400, f"Upload-Metadata key {key!r} appears twice")
        try:
            result[key] = base64.b64decode(pieces[1], validate=True) if len(pieces) == 2 else b""
        except (binascii.Error, ValueError):
            raise TusError(400, f"Upload-Metadata value for {key!r} is not base64") from None
    return result


def parse_concat(value: str | None) -> tuple[str | None, tuple[str, ...]]:
    """C{Upload-Concat}: C{partial}, or C{final;<url> <url> ...}."""
    if value is None:
        return None, ()
    value = value.strip()
    if value == "partial":
        return "partial", ()
    if value.startswith("final;"):
        parts = tuple(p for p in value[len("final;") :].split(" ") if p)
        if not parts:
            raise TusError(400, "Upload-Concat: final; must list at least one partial upload")
        return "final", parts
    raise TusError(400, f"Upload-Concat must be 'partial' or 'final;<urls>', got {value[:60]!r}")


def upload_id_from_url(url: str, prefix: str) -> str | None:
    """The upload id a part URL (absolute, or a path) names, if it is one of ours."""
    path = urlsplit(url).path
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix) :].strip("/")
    return rest if rest and "/" not in rest else None


@dataclass(frozen=True)
class Checksum:
    """A parsed C{Upload-Checksum}: the algorithm and the expected digest."""

    algorithm: str
    digest: bytes

    def hasher(self) -> Any:
        return CHECKSUM_ALGORITHMS[self.algorithm]()


def parse_checksum(value: str | None) -> Checksum | None:
    """C{Upload-Checksum: <algorithm> <base64 digest>}; unknown algorithms are 400."""
    if value is None:
        return None
    pieces = value.strip().split(" ")
    if len(pieces) != 2:
        raise TusError(400, "Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = pieces[0].lower(), pieces[1]
    if algorithm not in CHECKSUM_ALGORITHMS:
        supported = ",".join(CHECKSUM_ALGORITHMS)
        raise TusError(400, f"unsupported checksum algorithm {algorithm[:20]!r}; "
                            f"supported: {supported}")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise TusError(400, "the Upload-Checksum digest is not base64") from None
    if len(digest) != CHECKSUM_ALGORITHMS[algorithm]().digest_size:
        raise TusError(400, f"the Upload-Checksum digest has the wrong length for {algorithm}")
    return Checksum(algorithm, digest)


def check_content_type(value: str | None) -> None:
    """PATCH bodies (and creation-with-upload bodies) are raw bytes."""
    if value is None or value.split(";")[0].strip().lower() != OFFSET_CONTENT_TYPE:
        raise TusError(415, f"Content-Type must be {OFFSET_CONTENT_TYPE}")


def is_upload_body(content_type: str | None) -> bool:
    return content_type is not None and (
        content_type.split(";")[0].strip().lower() == OFFSET_CONTENT_TYPE
    )


def http_date(seconds: float) -> str:
    """An RFC 9110 IMF-fixdate, as C{Upload-Expires} wants."""
    return formatdate(seconds, usegmt=True)


def text(value: bytes | None) -> str:
    """A metadata value as text (invalid UTF-8 replaced)."""
    return (value or b"").decode("utf-8", "replace")


def encode_metadata(values: Mapping[str, bytes | str]) -> str:
    """An C{Upload-Metadata} value (the inverse of L{parse_metadata})."""
    items = []
    for key, value in values.items():
        if not _METADATA_KEY.match(key) or "," in key:
            raise ValueError(f"{key!r} is not a tus metadata key")
        raw = value.encode() if isinstance(value, str) else value
        items.append(f"{key} {base64.b64encode(raw).decode()}" if raw else key)
    return ",".join(items)


def encode_checksum(algorithm: str, digest: bytes) -> str:
    """An C{Upload-Checksum} value."""
    return f"{algorithm} {base64.b64encode(digest).decode()}"


def final_concat(urls: Iterable[str]) -> str:
    """The C{Upload-Concat} value of a final upload made of C{urls}, in order."""
    return "final;" + " ".join(urls)
