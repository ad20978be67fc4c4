"""
A client of the edge's live jobs, as a browser or a tool follows one: the
event stream (C{/api/events}) read frame by frame, and a job's log put
together from its C{job.log} events, fetching from the log endpoint what
the events skipped.  For the end-to-end tests and C{bench/jobs.py}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import treq
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers


@dataclass
class Frame:
    """
    One Server-Sent Event, with when it arrived (the reactor's clock).
    """

    id: int
    kind: str
    data: dict[str, Any]
    received: float


class EventStream:
    """
    C{GET /api/events} on C{base}, authenticated with an API key; every
    frame goes to C{frames} and to C{on_frame}.
    """

    def __init__(self, reactor: Any, base: str, api_key: str, on_frame: Callable[[Frame], object] | None = None) -> None:
        self._reactor = reactor
        self._base = base
        self._key = api_key
        self._on_frame = on_frame
        self.frames: list[Frame] = []
        self._buffer = b""
        self._response: Any = None
        self.done: Deferred[Any] | None = None

    async def open(self) -> None:
        self._response = await treq.get(
            f"{self._base}/api/events", headers=Headers({"Authorization": [f"Bearer {self._key}"]}), unbuffered=True,
            persistent=False,
        )
        if self._response.code != 200:
            raise AssertionError(f"/api/events answered {self._response.code}")
        self.done = treq.collect(self._response, self._data)

    def close(self) -> None:
        """
        Drop the connection (the edge ends the stream itself when it stops).
        """
        if self._response is not None:
            transport = getattr(self._response.original, "_transport", None)
            if transport is not None:
                transport.stopProducing()
        if self.done is not None:
            self.done.addErrback(lambda _: None)

    def _data(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            fields: dict[str, str] = {}
            for line in raw.decode().split("\n"):
                if line.startswith(":") or ":" not in line:
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if "event" not in fields:
                continue
            frame = Frame(int(fields.get("id", "0")), fields["event"], json.loads(fields.get("data") or "{}"),
                          self._reactor.seconds())
            self.frames.append(frame)
            if self._on_frame is not None:
                self._on_frame(frame)

    def of(self, kind: str, job_id: str | None = None) -> list[Frame]:
        return [f for f in self.frames if f.kind == kind and (job_id is None or f.data.get("job_id") == job_id)]


@dataclass
class LogFollower:
    """
    One job's log as a client rebuilds it from C{job.log} events: bytes
    that continue what it has are appended, bytes it has already are
    dropped, and when an event starts past what it has, the missing range
    is fetched from C{GET /api/v1/jobs/<id>/log?offset=N}.

    @ivar fetched: the ranges fetched that way (C{(from, to)}).
    """

    base: str
    api_key: str
    job_id: str
    attempt: int = 0
    data: bytearray = field(default_factory=bytearray)
    eof: bool = False
    fetched: list[tuple[int, int]] = field(default_factory=list)
    _fetching: bool = False

    def event(self, frame: Frame) -> Deferred[None] | None:
        """
        Take one C{job.log} event; a Deferred when a range is fetched.
        """
        data = frame.data
        if frame.kind != "job.log" or data["job_id"] != self.job_id or data["attempt"] < self.attempt:
            return None
        if data["attempt"] > self.attempt:
            self.attempt, self.data, self.eof = data["attempt"], bytearray(), False
        offset, text = data["offset"], data["text"].encode()
        if offset > len(self.data):
            return Deferred.fromCoroutine(self.fetch())
        self.data += text[len(self.data) - offset :]
        self.eof = self.eof or data["eof"]
        return None

    async def fetch(self) -> None:
        """
        The edge's held log from what this follower has.
        """
        start = len(self.data)
        response = await treq.get(
            f"{self.base}/api/v1/jobs/{self.job_id}/log?offset={start}",
            headers=Headers({"Authorization": [f"Bearer {self.api_key}"]}), persistent=False,
        )
        body = await response.content()
        if response.code != 200:
            raise AssertionError(f"log endpoint answered {response.code}: {body!r}")
        begins = int(response.headers.getRawHeaders("x-log-offset")[0])
        if begins != start:
            raise AssertionError(f"the edge no longer holds bytes {start}..{begins}")
        self.data += body
        self.fetched.append((start, start + len(body)))
        self.eof = response.headers.getRawHeaders("x-log-complete") == ["1"]
