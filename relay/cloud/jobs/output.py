"""
A run's output as relay keeps it: the log file, capped, and the progress
lines the job prints.

The progress protocol: a line C{::progress FRACTION [text]} (FRACTION from
0 to 1) says how far the job is.  Such lines stay in the log too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_PROGRESS = re.compile(rb"^::progress\s+([0-9]*\.?[0-9]+)(?:\s+(.*))?$")
#: Longest line looked at for progress; longer ones are only logged.
_LINE_MAX = 4096


def cut_marker(limit: int) -> bytes:
    return f"\n[relay: the log was cut here, at its limit of {limit} bytes]\n".encode()


class RunLog:
    """
    The combined stdout and stderr of one run, written to C{path} up to
    C{limit} bytes (then a marker, and the rest counted, not kept), and the
    latest progress it announced.

    @param on_stored: called with C{(offset, data)} for the bytes written to
        the file (the marker too), C{offset} being where they start in it:
        what the edges are sent live.
    @ivar stored: the file's size.
    """

    def __init__(self, path: Path, limit: int, on_stored: Callable[[int, bytes], object] | None = None) -> None:
        self.path = path
        self._limit = limit
        self._file: BinaryIO = open(path, "wb")
        self._on_stored = on_stored
        self.size = 0  # bytes the job printed
        self.kept = 0
        self.stored = 0
        self.progress = -1.0
        self.status: str | None = None
        self._line = b""

    def write(self, offset: int, data: bytes) -> None:
        self.size = offset + len(data)
        room = self._limit - self.kept
        if room > 0:
            kept = data[:room]
            self.kept += len(kept)
            if len(data) >= room:
                kept += cut_marker(self._limit)
            self._file.write(kept)
            if self._on_stored is not None:
                self._on_stored(self.stored, kept)
            self.stored += len(kept)
        self._scan(data)

    def _scan(self, data: bytes) -> None:
        *lines, rest = (self._line + data).split(b"\n")
        self._line = rest[-_LINE_MAX:]
        for line in lines:
            match = _PROGRESS.match(line[:_LINE_MAX].rstrip(b"\r"))
            if match:
                self.progress = min(1.0, float(match.group(1)))
                text = match.group(2)
                self.status = None if text is None else text[:200].decode("utf-8", "replace")

    def read(self, start: int, end: int) -> bytes:
        """
        Bytes C{start} to C{end} of the stored log (what L{write} stored).
        """
        if not self._file.closed:
            self._file.flush()
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(max(0, min(end, self.stored) - start))

    def tail(self, lines: int = 20) -> str:
        """
        The last lines kept, as text (the reason a failed job shows).
        """
        if not self._file.closed:  # the worker reads it after closing it too
            self._file.flush()
        with open(self.path, "rb") as f:
            f.seek(max(0, self.kept - 8192))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self._file.close()
