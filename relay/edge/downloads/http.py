"""
The rules of RFC 9110 a download follows, as plain functions of the
request's headers and the file (no I/O): validators, conditional requests,
one byte range, and the headers of the answer.

  - The C{ETag} is strong: the file's sha256 in quotes.  C{If-None-Match}
    compares weakly (RFC 9110 13.1.2) and answers 304 to GET and HEAD;
    C{If-Match} compares strongly and answers 412.  C{If-Modified-Since}
    counts only without C{If-None-Match}, C{If-Unmodified-Since} only
    without C{If-Match}.
  - C{Range} is honoured when it is one C{bytes} range; a malformed
    header, another unit or several ranges are ignored (the whole file,
    200), which RFC 9110 14.2 allows.  A range that starts past the end is
    answered 416 with C{Content-Range: bytes */length}.  C{If-Range} with an
    entity tag that is not the current one (or a date that is not
    C{Last-Modified}) turns the range off: the whole file, 200.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote

_RANGE = re.compile(r"bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.ASCII)
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}"
    r"(\s*;\s*[A-Za-z0-9!#$&^_.+-]{1,64}=(\"[^\"\\\r\n]{0,64}\"|[A-Za-z0-9!#$&^_.+-]{1,64}))*",
    re.ASCII,
)
#: Types a browser would run or render in the edge's origin: always served
#: as opaque bytes (the answer is an attachment anyway, with nosniff).
_ACTIVE = re.compile(
    r"(text/html|application/xhtml|image/svg|text/xml|application/xml|text/javascript|"
    r"application/javascript)",
    re.IGNORECASE,
)
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class Answer:
    """
    What to answer: C{status}, and for 200/206 the byte span
    C{[start, end)} to send.
    """

    status: int
    start: int = 0
    end: int = 0


def etag_of(sha256: str) -> str:
    return f'"{sha256}"'


def http_date(seconds: float) -> str:
    return formatdate(int(seconds), usegmt=True)


def _date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _tags(value: str) -> list[tuple[bool, str]]:
    """An C{If-(None-)Match} list as (weak, opaque tag) pairs."""
    found = []
    for part in value.split(","):
        part = part.strip()
        weak = part.startswith("W/")
        found.append((weak, part[2:] if weak else part))
    return found


def _matches(value: str, etag: str, *, strong: bool) -> bool:
    if value.strip() == "*":
        return True
    return any(tag == etag and not (strong and weak) for weak, tag in _tags(value))


def parse_range(value: str | None, length: int) -> tuple[int, int] | None | str:
    """
    The one byte range C{value} asks for, as C{[start, end)}; C{None} to
    send the whole file (no header, malformed, several ranges); the string
    C{"unsatisfiable"} for a range that starts past the end.
    """
    if value is None:
        return None
    found = _RANGE.fullmatch(value)
    if found is None:
        return None
    first, last = found.group(1), found.group(2)
    if first:
        start = int(first)
        if last and int(last) < start:
            return None  # invalid: ignored
        if start >= length:
            return "unsatisfiable"
        end = min(int(last) + 1, length) if last else length
        return start, end
    if not last:
        return None
    suffix = int(last)
    if suffix == 0 or length == 0:
        return "unsatisfiable"
    return max(0, length - suffix), length


def decide(headers: dict[str, str | None], length: int, etag: str, modified: float) -> Answer:
    """
    The answer to a GET or HEAD of a file with these validators.
    C{headers} maps lower-case names to values (or C{None}).
    """
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _matches(if_match, etag, strong=True):
            return Answer(412)
    else:
        since = _date(headers.get("if-unmodified-since"))
        if since is not None and int(modified) > since:
            return Answer(412)
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag, strong=False):
            return Answer(304)
    else:
        since = _date(headers.get("if-modified-since"))
        if since is not None and int(modified) <= since:
            return Answer(304)
    asked = parse_range(headers.get("range"), length)
    if asked is not None and not _if_range_holds(headers.get("if-range"), etag, modified):
        asked = None
    if asked == "unsatisfiable":
        return Answer(416)
    if isinstance(asked, tuple):
        return Answer(206, asked[0], asked[1])
    return Answer(200, 0, length)


def _if_range_holds(value: str | None, etag: str, modified: float) -> bool:
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"') or value.startswith("W/"):
        return value == etag  # strong comparison; a weak tag never holds
    date = _date(value)
    return date is not None and date == int(modified)


def content_type(stored: str) -> str:
    """The stored type if it is a well-formed, passive media type; else bytes."""
    stored = stored.strip()
    if not stored or not _MEDIA_TYPE.fullmatch(stored) or _ACTIVE.match(stored):
        return OCTET_STREAM
    return stored


def disposition(name: str) -> str:
    """
    C{attachment} with an ASCII C{filename} fallback (no quotes,
    backslashes, controls or path separators) and the real name in an RFC
    8187 C{filename*}.
    """
    name = name.replace("/", "_").replace("\\", "_") or "download"
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    ascii_name = (
        re.sub(r"[^A-Za-z0-9!#$&+.^_`|~ ()\[\]{}@,;=-]", "_", ascii_name).strip(" .") or "download"
    )
    return f"attachment; filename=\"{ascii_name[:200]}\"; filename*=UTF-8''{quote(name[:500].encode('utf-8', 'replace'), safe='')}"
