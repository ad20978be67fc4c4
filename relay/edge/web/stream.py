"""
C{GET /api/events}: the live events of L{relay.edge.events} as Server-Sent
Events, for the browser's C{EventSource} (or C{curl -N}).

Each event is one frame, written to the connection as it is published
(never buffered)::

    id: 42
    event: command.rejected
    data: {"command_id": "...", "reason": "..."}

A comment line (C{: keepalive}) every C{heartbeat} seconds keeps proxies
from cutting a quiet stream; at the same time the caller's credentials are
checked again, so a stream ends soon after its session or API key does.
A client that reconnects with C{Last-Event-ID} gets the events it missed,
or a C{reset} event (reload what you show) when the hub's history no longer
reaches back that far; a new client first gets a C{ready} event whose id
is where it starts.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from klein import Klein
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from relay.edge.events import Event, EventHub
from relay.edge.identity import Identity
from relay.edge.web.guard import answer, caller
from relay.edge.web.routes import api_route

HEARTBEAT = 15.0
#: How long a browser waits before reconnecting, in milliseconds.
RETRY_MS = 3000


def frame(event_id: int, kind: str, data: dict[str, Any]) -> bytes:
    """
    One SSE frame (C{json.dumps} never writes a newline, so one C{data:}
    line holds it all).
    """
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


class EventStreams(MultiService):
    """
    The open event streams; stopping the service ends them (so that a
    stopping edge does not wait for browsers to go away).  Services that
    tell the streams' users of changes (L{relay.edge.web.status}) are its
    children.
    """

    log = Logger()

    def __init__(
        self, hub: EventHub, identity: Identity, clock: IReactorTime, heartbeat: float = HEARTBEAT,
        per_user: int = 8,
    ) -> None:
        super().__init__()
        self._hub = hub
        self._identity = identity
        self._clock = clock
        self._heartbeat = heartbeat
        self._per_user = per_user
        self._by_user: Counter[str] = Counter()
        self._open: set[Deferred[None]] = set()

    @property
    def open(self) -> int:
        return len(self._open)

    def users(self) -> list[str]:
        """The users with an open stream."""
        return list(self._by_user)

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        for ended in list(self._open):
            ended.callback(None)
        return stopped  # type: ignore[no-any-return]

    def routes(self, app: Klein) -> None:
        @api_route(app, "/events", ["GET"])
        async def events(request: IRequest) -> bytes:
            principal = await caller(self._identity, request, before_password_change=True)
            if isinstance(principal, bytes):
                return principal
            if not self.running:
                return answer(request, 503, {"error": "the edge is stopping"})
            user_id = principal.user_id
            if self._by_user[user_id] >= self._per_user:
                request.setHeader(b"retry-after", b"30")
                return answer(request, 429, {"error": f"at most {self._per_user} event streams at once; "
                                                      "close another tab or client"})
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            # nginx buffers responses unless told not to.
            request.setHeader(b"x-accel-buffering", b"no")
            self._by_user[user_id] += 1
            try:
                await self._stream(request, user_id)
            finally:
                self._by_user[user_id] -= 1
                if not self._by_user[user_id]:
                    del self._by_user[user_id]
            return b""

    async def _stream(self, request: IRequest, user_id: str) -> None:
        def write(event: Event) -> None:
            request.write(frame(event.id, event.kind, event.data))

        # Subscribed before the replay is written: nothing published in
        # between is lost (the reactor runs neither in between anyway).
        request.write(f"retry: {RETRY_MS}\n\n".encode())
        unsubscribe = self._hub.subscribe(user_id, write)
        ended: Deferred[None] = Deferred()
        self._open.add(ended)
        beat = LoopingCall(self._beat, request, ended)
        beat.clock = self._clock
        try:
            self._catch_up(request, user_id, write)
            beat.start(self._heartbeat, now=False)
            finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
            finished.addBoth(lambda _: None if ended.called else ended.callback(None))
            # The client going away cancels this (Klein cancels the handler).
            await ended
        finally:
            unsubscribe()
            self._open.discard(ended)
            if beat.running:
                beat.stop()

    def _catch_up(self, request: IRequest, user_id: str, write: Any) -> None:
        header = request.getHeader(b"last-event-id")
        if header is None:
            request.write(frame(self._hub.last_id, "ready", {}))
            return
        try:
            missed = self._hub.since(user_id, int(header.strip()))
        except ValueError:
            missed = None
        if missed is None:
            request.write(frame(self._hub.last_id, "reset", {}))
            return
        for event in missed:
            write(event)

    def _beat(self, request: IRequest, ended: Deferred[None]) -> None:
        request.write(b": keepalive\n\n")

        def checked(result: tuple[object, object]) -> None:
            if result[0] is None and not ended.called:
                ended.callback(None)  # logged out, password changed, key revoked

        def failed(reason: Failure) -> None:
            self.log.failure("checking an event stream's credentials failed", reason)

        Deferred.fromCoroutine(self._identity.check(request)).addCallbacks(checked, failed)
