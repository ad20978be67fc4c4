"""
Media types from clients (tus C{filetype} metadata) and the Content-Type
relay stores objects with.

A client's value must be a media type (RFC 9110: C{type/subtype}, tokens
only, optional parameters); the edge refuses anything else with 400.  What
goes to S3 is relay's choice, never the client's raw value: inert types
from L{INERT} as declared (without parameters), everything else (HTML, SVG,
XML, scripts, anything unknown) as C{application/octet-stream}, so that an
object served from the bucket can never run as a page of its origin.
"""

from __future__ import annotations

import re

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(
    rf"({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f\x7f]*\"))*)[ \t]*\Z"
)
MAX_LENGTH = 255
FALLBACK = "application/octet-stream"

#: Types stored as declared: none of them is rendered as active content.
INERT = re.compile(
    r"(image/(png|jpeg|gif|webp|tiff|bmp|avif|heic|heif)"
    r"|audio/[a-z0-9.+-]+|video/[a-z0-9.+-]+"
    r"|text/(plain|csv|tab-separated-values|markdown)"
    r"|application/(pdf|zip|gzip|x-gzip|x-tar|x-bzip2|x-xz|zstd|x-7z-compressed|json|octet-stream"
    r"|x-hdf5|x-netcdf|vnd\.apache\.parquet|x-parquet|fits|dicom))\Z"
)


def parse_media_type(value: str) -> str:
    """
    C{type/subtype} of a media type, lower-case, parameters dropped; C{""}
    for an empty value.

    @raise ValueError: it is not a media type.
    """
    value = value.strip(" \t")
    if not value:
        return ""
    match = _MEDIA_TYPE.match(value) if len(value) <= MAX_LENGTH else None
    if match is None:
        raise ValueError("a media type such as 'image/png' (type/subtype, no control characters)")
    return f"{match[1]}/{match[2]}".lower()


def stored_content_type(declared: str) -> str:
    """The Content-Type an object is stored with, whatever was declared."""
    try:
        media_type = parse_media_type(declared)
    except ValueError:
        return FALLBACK
    return media_type if INERT.match(media_type) else FALLBACK
