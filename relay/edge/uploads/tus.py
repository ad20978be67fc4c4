"""
What the edge's upload receiver adds to the shared tus code
(L{relay.tus.protocol}): the extensions it offers, the headers browsers may
send and read (CORS), its upload ids, and how it reads the metadata it
shows (file name, media type).  What relay supports is written down in
C{docs/tus.md}.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

from relay.media_types import parse_media_type
from relay.tus.protocol import Creation, TusError
from relay.tus.protocol import parse_creation as parse_tus_creation

EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
)
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
MAX_FILENAME_BYTES = 255

#: The metadata relay reads as text: each must be valid UTF-8 and valid
#: Unicode text (no surrogates or non-characters), else 400.
TEXT_METADATA = ("filename", "filetype", "type", "project")


def parse_creation(
    length: str | None, defer: str | None, metadata: str | None, concat: str | None
) -> Creation:
    """Parse and check the headers of a creation request at the edge."""
    return parse_tus_creation(length, defer, metadata, concat, TEXT_METADATA)


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
