"""
One partial upload's bytes at the receiver.  A partial upload covers S3
parts C{first} to C{last} of a transfer, in order; its offset is the bytes
of its parts S3 holds (L{PartialUpload.stored}) plus the bytes of the next
part held in memory (L{PartialUpload.held}).  When the held part is
complete it is checked against the MD5 the edge announced and written to
S3 (UploadPart) before more bytes are taken, so at most one part per
partial is ever in memory and nothing touches the cloud's disk.

After a restart the held bytes are gone: the offset is what S3 holds
(ListParts: the partial's parts from the first, with the planned size and
MD5, up to the first missing one).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

from twisted.internet.defer import Deferred

from relay.cloud.objects import PartInfo, md5_hex
from relay.cloud.receiver.store import PartialRecord
from relay.cloud.transfer_store import Transfer


class PartMismatch(Exception):
    """A complete part's bytes do not have the MD5 announced for it."""


class PartialUpload:
    """
    See the module docstring.  L{writer} is the request writing to it now
    (one at a time); L{idle_since} when the last one ended.
    """

    def __init__(self, transfer: Transfer, record: PartialRecord, md5s: Mapping[int, str]) -> None:
        self.transfer = transfer
        self.record = record
        self.md5s = dict(md5s)
        #: The part being filled, and the bytes of the partial before it.
        self.part = record.first
        self.stored = 0
        self.held = bytearray()
        self.writer: object | None = None
        self.released: Deferred[None] | None = None
        self.idle_since = 0.0

    @property
    def length(self) -> int:
        return self.record.length

    @property
    def offset(self) -> int:
        return self.stored + len(self.held)

    @property
    def complete(self) -> bool:
        return self.stored == self.length

    def part_length(self) -> int:
        return self.transfer.part_length(self.part)

    def catch_up(self, parts: list[PartInfo]) -> None:
        """What S3 holds decides the offset; held bytes are dropped."""
        held = {p.number: p for p in parts}
        self.part, self.stored, self.held = self.record.first, 0, bytearray()
        while self.part <= self.record.last:
            found, md5 = held.get(self.part), self.md5s.get(self.part)
            if found is None or md5 is None or found.size != self.part_length() or found.etag != md5_hex(md5):
                break
            self.stored += found.size
            self.part += 1

    def take(self, data: bytes) -> tuple[bytes, bool]:
        """
        Hold as much of C{data} as fits in the part being filled; returns
        what did not fit, and whether the held part is now complete.
        """
        room = self.part_length() - len(self.held)
        self.held += data[:room]
        return data[room:], len(self.held) == self.part_length()

    def check_held(self) -> str:
        """The held part is complete: its announced MD5 (base64), or L{PartMismatch}."""
        expected = self.md5s.get(self.part, "")
        actual = base64.b64encode(hashlib.md5(self.held).digest()).decode()
        if actual != expected:
            self.held = bytearray()
            raise PartMismatch(f"part {self.part} does not have the MD5 announced for it")
        return expected

    def stored_part(self) -> None:
        """S3 took the held part."""
        self.stored += len(self.held)
        self.held = bytearray()
        self.part += 1

    def drop_held(self) -> None:
        self.held = bytearray()
