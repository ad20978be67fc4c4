"""
The message types of the download path (S3 -> edge through presigned GET
URLs), as JSON schemas for the link's catalogue.  C{docs/downloads.md}
tells the whole story; C{docs/messages.md} ("Downloads") lists them.

Edge -> cloud (C{relay.to-cloud}): C{download.request} asks for a
presigned GET URL of one stored file.  Cloud -> edge
(C{relay.to-edge.<id>}): C{download.url} (the URL, and what the object
must be: size, sha256, content type) or C{download.failed}.

Cloud -> edge, unasked: C{file.content}, a job's result file of at most
L{INLINE_MAX} bytes, sent to every edge with its registration, so that
small results are at the edge without a round trip across the link.

Requests are idempotent and their answers are not kept: an edge whose
answer does not come asks again (a URL is also asked for again when the
one it holds is about to expire or is refused).
"""

from __future__ import annotations

from typing import Any

from relay.link.catalogue import Catalogue

REQUEST = "download.request"
URL = "download.url"
FAILED = "download.failed"
CONTENT = "file.content"

#: Results up to this size travel to the edges as one C{file.content}
#: message (the bytes its binary payload) instead of a presigned GET.
INLINE_MAX = 1 << 20

#: Why the cloud cannot hand out a URL (C{download.failed}).
#:   - C{not_found}: the registry holds no such file (deleted, never was).
#:   - C{not_stored}: the file is not in S3 yet (or any more).
#:   - C{unavailable}: S3 could not be asked (the edge may ask again).
FAILURE_CODES = ("not_found", "not_stored", "unavailable")

_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_NAME_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


SCHEMAS: dict[str, tuple[dict[str, Any], str]] = {
    REQUEST: (
        _object({"request_id": _ID, "file_id": _NAME_ID}),
        "edge -> cloud: a presigned GET URL for this stored file",
    ),
    URL: (
        _object(
            {
                "request_id": _ID,
                "file_id": _NAME_ID,
                "url": {"type": "string", "maxLength": 8192},
                "expires_in": {"type": "integer", "minimum": 1, "maximum": 7 * 86400},
                "size": {"type": "integer", "minimum": 0},
                "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "content_type": {"type": "string", "maxLength": 255},
            }
        ),
        "cloud -> edge: a presigned GET URL and what the object must be",
    ),
    FAILED: (
        _object(
            {
                "request_id": _ID,
                "file_id": _NAME_ID,
                "code": {"type": "string", "enum": list(FAILURE_CODES)},
                "reason": {"type": "string", "maxLength": 2000},
            }
        ),
        "cloud -> edge: no URL for this file (see the codes)",
    ),
    CONTENT: (
        _object({
            "file_id": _NAME_ID,
            "size": {"type": "integer", "minimum": 0, "maximum": INLINE_MAX},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "content_type": {"type": "string", "maxLength": 255},
        }),
        "cloud -> edge: a small result file, its bytes the payload",
    ),
}


def register_types(catalogue: Catalogue) -> None:
    """
    Add the download path's message types to a catalogue (both sides
    register all of them).
    """
    catalogue.register_all(SCHEMAS)
