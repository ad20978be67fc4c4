"""
The tus 1.0 protocol, apart from any transport: the headers relay reads and
writes, how each is parsed, and the error every malformed one gets.

Everything here is a plain function or value; the routes in
L{relay.edge.uploads.resource} feed it header values and turn a L{TusError}
into a response.  What relay supports is written down in C{docs/tus.md}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from relay.media_types import parse_media_type
from relay.text import bad_text

VERSION = "1.0.0"
EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
#: Checksum algorithms by their tus names (sha1 is required by the spec).
CHECKSUM_ALGORITHMS: Mapping[str, Callable[[], Any]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
}
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

#: Status codes tus adds to HTTP's.
CHECKSUM_MISMATCH = 460

#: Request headers a browser must be allowed to send (CORS preflight).
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Concat",
    "Upload-Checksum",
    "X-HTTP-Method-Override",
    "X-Requested-With",
    "X-Request-ID",
    "X-CSRF-Token",
)
#: Response headers a browser script may read (CORS).
RESPONSE_HEADERS = (
    "Location",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Defer-Length",
    "Upload-Metadata",
    "Upload-Concat",
    "Upload-Expires",
)
METHODS = ("POST", "HEAD", "PATCH", "DELETE", "OPTIONS")

#: The ids relay gives uploads (and checksum scratch files in the spool).
OURS = re.compile(r"[0-9a-f]{32}(-x[0-9a-f]{8})?\Z")
_INTEGER = re.compile(r"[0-9]{1,19}\Z")
_METADATA_KEY = re.compile(r"[\x21-\x7e]+\Z")
MAX_FILENAME_BYTES = 255


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
    length: str | None, defer: str | None, metadata: str | None, concat: str | None
) -> Creation:
    """Parse and check the headers of a creation request."""
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
    for key in TEXT_METADATA:
        check_text(key, parsed.get(key))
    return Creation(size, raw, parsed, kind, parts)


#: The metadata relay reads as text: each must be valid UTF-8 and valid
#: Unicode text (no surrogates or non-characters), else 400.
TEXT_METADATA = ("filename", "filetype", "type", "project")


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


def sanitise_filename(raw: bytes | str | None, fallback: str = "upload") -> str:
    """
    A file name safe to show and to store as metadata: the last path
    component only, no control or format characters, no leading dots or
    surrounding spaces, at most 255 bytes of UTF-8 (the extension kept).  It
    is never used as a path.
    """
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
    text = unicodedata.normalize("NFC", text)
    text = re.split(r"[/\\]", text)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] not in ("C", "Z") or c == " ")
    text = text.strip(" .")
    if not text:
        return fallback
    if len(text.encode()) > MAX_FILENAME_BYTES:
        stem, dot, ext = text.rpartition(".")
        if not dot or len(ext.encode()) > 16:
            stem, ext, dot = text, "", ""
        room = MAX_FILENAME_BYTES - len((dot + ext).encode())
        stem = stem.encode()[:room].decode("utf-8", "ignore").rstrip(" .")
        text = (stem + dot + ext) if stem else fallback
    return text


def filetype(metadata: Mapping[str, bytes]) -> str:
    """
    The upload's declared media type (C{filetype}, or C{type} as some
    clients send it), checked: a value that is not a media type is 400.
    """
    raw = metadata.get("filetype") or metadata.get("type") or b""
    try:
        return parse_media_type(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        reason = e if isinstance(e, ValueError) and not isinstance(e, UnicodeDecodeError) else "UTF-8 text"
        raise TusError(400, f"Upload-Metadata filetype must be {reason}") from None


def http_date(seconds: float) -> str:
    """An RFC 9110 IMF-fixdate, as C{Upload-Expires} wants."""
    return formatdate(seconds, usegmt=True)


def text(value: bytes | None) -> str:
    """A metadata value as text (invalid UTF-8 replaced)."""
    return (value or b"").decode("utf-8", "replace")
