"""
How a staged file is cut into S3 parts, and the digests each part is sent
with.

Parts are as small as allowed, because on a link that resets connections a
part is lost whole when its connection breaks: at least C{min_part_size}
(8 MiB), a multiple of the spool's encryption segment (so that a part
decrypts from whole segments), and large enough that the file fits in
S3's 10,000 parts.  The last part holds the rest.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

MiB = 1 << 20
MIN_PART_SIZE = 8 * MiB
MAX_PARTS = 10_000
#: S3's largest part, and so (with MAX_PARTS) the largest file.
MAX_PART_SIZE = 5 << 30


class TooLarge(ValueError):
    """The file cannot be one S3 object of at most 10,000 parts."""


@dataclass(frozen=True)
class Part:
    """One part: its number (from 1) and the byte range of the file it holds."""

    number: int
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class PartPlan:
    """The parts of a file of C{size} bytes: all C{part_size} but the last."""

    size: int
    part_size: int
    count: int

    def part(self, number: int) -> Part:
        if not 1 <= number <= self.count:
            raise IndexError(f"part {number} of {self.count}")
        offset = (number - 1) * self.part_size
        return Part(number, offset, min(self.part_size, self.size - offset))

    def parts(self) -> Iterator[Part]:
        for number in range(1, self.count + 1):
            yield self.part(number)


def plan_parts(
    size: int,
    segment_size: int,
    *,
    min_part_size: int = MIN_PART_SIZE,
    max_parts: int = MAX_PARTS,
) -> PartPlan:
    """
    The smallest part size that is a multiple of C{segment_size}, at least
    C{min_part_size}, and needs at most C{max_parts} parts.  An empty file
    is one empty part (S3 needs at least one).

    @raise TooLarge: a part would exceed S3's 5 GiB.
    """
    if size < 0 or segment_size <= 0 or min_part_size <= 0 or max_parts <= 0:
        raise ValueError("sizes must be positive")
    part_size = -(-min_part_size // segment_size) * segment_size
    needed = -(-size // max_parts)  # the smallest part that keeps the count in bounds
    if needed > part_size:
        part_size = -(-needed // segment_size) * segment_size
    if part_size > MAX_PART_SIZE:
        raise TooLarge(f"{size} bytes need parts of {part_size} bytes, over S3's 5 GiB")
    count = max(1, -(-size // part_size))
    return PartPlan(size, part_size, count)


@dataclass(frozen=True)
class Digests:
    """
    The whole file's sha256 (hex) and each part's MD5 (base64, as
    C{Content-MD5} wants it).
    """

    sha256: str
    md5s: tuple[str, ...]


def measure(plan: PartPlan, blocks: Callable[[int, int], Iterable[bytes]]) -> Digests:
    """
    Read the file once, in order, and compute its L{Digests}.
    C{blocks(offset, size)} yields the plaintext of that range (the spool
    reader's C{blocks}).  Blocking: run it in a thread.
    """
    whole = hashlib.sha256()
    md5s = []
    for part in plan.parts():
        md5 = hashlib.md5()
        for block in blocks(part.offset, part.size):
            md5.update(block)
            whole.update(block)
        md5s.append(base64.b64encode(md5.digest()).decode())
    return Digests(whole.hexdigest(), tuple(md5s))
