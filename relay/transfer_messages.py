"""
The message types of the transfer stage (edge -> S3, through the cloud's
tus receiver or presigned URLs), as JSON schemas for the link's catalogue.  C{docs/messages.md}
("Transfers") describes the same types for people; C{docs/transfer.md}
tells the whole story.

Edge -> cloud (C{relay.to-cloud}): C{transfer.begin}, C{transfer.presign},
C{transfer.status}, C{transfer.finish}, C{transfer.abort},
C{transfer.authorize}.  Cloud -> edge (C{relay.to-edge.<id>}):
C{transfer.started}, C{transfer.urls}, C{transfer.parts},
C{transfer.failed}, C{transfer.aborted}, C{transfer.authorized},
C{file.registered}.
"""

from __future__ import annotations

from typing import Any

from relay.link.catalogue import Catalogue

BEGIN = "transfer.begin"
PRESIGN = "transfer.presign"
STATUS = "transfer.status"
FINISH = "transfer.finish"
ABORT = "transfer.abort"
AUTHORIZE = "transfer.authorize"
AUTHORIZED = "transfer.authorized"
STARTED = "transfer.started"
URLS = "transfer.urls"
PARTS = "transfer.parts"
FAILED = "transfer.failed"
ABORTED = "transfer.aborted"
REGISTERED = "file.registered"

#: The requests the cloud acts on, and the replies the edge receives.
REQUESTS = (BEGIN, PRESIGN, STATUS, FINISH, ABORT, AUTHORIZE)
REPLIES = (STARTED, URLS, PARTS, FAILED, ABORTED, AUTHORIZED, REGISTERED)

#: At most this many parts in one C{transfer.presign} / C{transfer.urls}
#: (a presigned URL is 0.5-1 KiB: a message stays near 100 KiB).
MAX_PRESIGN_BATCH = 100
#: At most this many parts in one C{transfer.parts} page (ListParts' page).
MAX_PARTS_PAGE = 1000
#: S3's limits.
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 << 20
MAX_PART_SIZE = 5 << 30

#: Why the cloud refused or could not finish a transfer (C{transfer.failed}).
#:   - C{no_such_upload}: S3 does not know the multipart upload (aborted,
#:     expired by the lifecycle rule): the edge starts over.
#:   - C{incomplete}: C{missing} lists parts S3 lacks or holds with another
#:     digest: the edge sends them again, then finishes again.
#:   - C{mismatch}: the completed object is not what was announced (size,
#:     sha256 or ETag): the edge starts over.
#:   - C{refused}: the registry refused the file (no such project ...);
#:     the edge keeps the spool file and marks the upload failed.
#:   - C{no_receiver}: this cloud runs no tus receiver (C{transfer.authorize}):
#:     the edge sends the transfer's parts with presigned URLs instead.
#:   - C{invalid}: the request makes no sense (unknown transfer, another
#:     edge's transfer, inconsistent sizes).
FAILURE_CODES = ("no_such_upload", "incomplete", "mismatch", "refused", "invalid", "no_receiver")

_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_NAME_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_MD5_BASE64 = {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$"}
_NUMBER = {"type": "integer", "minimum": 1, "maximum": MAX_PARTS}
_SIZE = {"type": "integer", "minimum": 0}
_KEY = {"type": "string", "minLength": 1, "maxLength": 1024}


def _object(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def _list(item: dict[str, Any], most: int) -> dict[str, Any]:
    return {"type": "array", "items": item, "maxItems": most}


SCHEMAS: dict[str, tuple[dict[str, Any], str]] = {
    BEGIN: (
        _object({
            "transfer_id": _ID, "file_id": _NAME_ID, "project": _NAME_ID, "owner": _NAME_ID,
            "name": {"type": "string", "minLength": 1, "maxLength": 1000},
            "content_type": {"type": "string", "maxLength": 255},
            "size": _SIZE, "sha256": _SHA256,
            "part_size": {"type": "integer", "minimum": MIN_PART_SIZE, "maximum": MAX_PART_SIZE},
            "part_count": _NUMBER,
        }),
        "edge -> cloud: open a multipart upload for a staged file",
    ),
    PRESIGN: (
        _object({
            "transfer_id": _ID,
            "parts": {**_list(_object({"number": _NUMBER, "md5": _MD5_BASE64}), MAX_PRESIGN_BATCH),
                      "minItems": 1},
        }),
        "edge -> cloud: presigned PUT URLs for these parts, each bound to its Content-MD5",
    ),
    STATUS: (
        _object({"transfer_id": _ID, "request_id": _ID}),
        "edge -> cloud: which parts does S3 hold (after a restart)",
    ),
    FINISH: (
        _object({"transfer_id": _ID}),
        "edge -> cloud: every part is in S3; complete, verify and register the file",
    ),
    ABORT: (
        _object({"transfer_id": _ID}),
        "edge -> cloud: give the multipart upload up",
    ),
    AUTHORIZE: (
        _object({"transfer_id": _ID}),
        "edge -> cloud: a token for the cloud's tus receiver, valid for this transfer only",
    ),
    AUTHORIZED: (
        _object({
            "transfer_id": _ID,
            "token": {"type": "string", "pattern": "^[A-Za-z0-9_-]{43}$"},
            "expires_in": {"type": "integer", "minimum": 1, "maximum": 86400},
            "url": {"type": "string", "minLength": 1, "maxLength": 2000},
        }),
        "cloud -> edge: a short-lived bearer token for this transfer's uploads at url "
        "(it replaces any earlier one)",
    ),
    STARTED: (
        _object({"transfer_id": _ID, "object_key": _KEY}),
        "cloud -> edge: the multipart upload is open",
    ),
    URLS: (
        _object({
            "transfer_id": _ID,
            "expires_in": {"type": "integer", "minimum": 1, "maximum": 7 * 86400},
            "urls": _list(
                _object({"number": _NUMBER, "url": {"type": "string", "maxLength": 8192}}),
                MAX_PRESIGN_BATCH,
            ),
        }),
        "cloud -> edge: presigned PUT URLs",
    ),
    PARTS: (
        _object({
            "transfer_id": _ID, "request_id": _ID,
            "page": {"type": "integer", "minimum": 1}, "last": {"type": "boolean"},
            "parts": _list(
                _object({"number": _NUMBER, "size": _SIZE,
                         "etag": {"type": "string", "maxLength": 200}}),
                MAX_PARTS_PAGE,
            ),
        }),
        "cloud -> edge: one page of the parts S3 holds (answer to transfer.status)",
    ),
    FAILED: (
        _object(
            {
                "transfer_id": _ID, "code": {"type": "string", "enum": list(FAILURE_CODES)},
                "reason": {"type": "string", "maxLength": 2000},
                "missing": _list(_NUMBER, MAX_PARTS),
            },
            optional=("missing",),
        ),
        "cloud -> edge: a transfer request failed (see the codes)",
    ),
    ABORTED: (
        _object({"transfer_id": _ID}),
        "cloud -> edge: the multipart upload is gone",
    ),
    REGISTERED: (
        _object({
            "transfer_id": _ID, "file_id": _NAME_ID, "project": _NAME_ID, "object_key": _KEY,
            "size": _SIZE, "sha256": _SHA256, "etag": {"type": "string", "maxLength": 200},
        }),
        "cloud -> edge: the object is complete, verified and registered; the spool copy may go",
    ),
}


def register_types(catalogue: Catalogue) -> None:
    """
    Add the transfer stage's message types to a catalogue (both sides
    register all of them).
    """
    catalogue.register_all(SCHEMAS)
