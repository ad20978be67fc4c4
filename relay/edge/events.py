"""
The edge's live events: what changed, told to the people it concerns as it
happens (upload and transfer progress, a command applied or refused, the
replica catching up), for the browser's C{EventSource} at C{/api/events}.

Parts of the edge L{EventHub.publish} events addressed to a user (or to
everyone); each subscriber gets the events for its user in order.  A short
history lets a browser that reconnects (C{Last-Event-ID}) miss nothing that
happened while it was away, as long as it was away briefly; otherwise it is
told to reload what it shows (the C{reset} event).

Progress events are frequent: publishers coalesce them (at most a few per
second per upload), the hub does not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

log = Logger()

EVERYONE = "*"
#: A subscriber for every event (L{EventHub.watch}); not a user id.
_ALL = "\x00all"


@dataclass(frozen=True)
class Event:
    """
    One event: C{id} increases by one per event published by this process
    (ids start over when the edge restarts; a C{Last-Event-ID} from before
    is answered with C{reset}).
    """

    id: int
    kind: str
    owner: str
    data: dict[str, Any] = field(default_factory=dict)

    def concerns(self, user_id: str) -> bool:
        return user_id == _ALL or self.owner in (user_id, EVERYONE)


Subscriber = Callable[[Event], object]


class EventHub:
    """
    In-process publish/subscribe with a bounded history.

    @param history: how many recent events are kept for reconnecting clients.
    @param first_id: the first event's id.  The edge starts each run from
        the clock (microseconds), so that a client's C{Last-Event-ID} from an
        earlier run is always below the history and gets a C{reset}, not
        another run's events under the same numbers.
    """

    def __init__(self, history: int = 2000, first_id: int = 1) -> None:
        self._recent: deque[Event] = deque(maxlen=history)
        self._subscribers: dict[int, tuple[str, Subscriber]] = {}
        self._next_id = first_id
        self._next_token = 0

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    def publish(self, owner: str, kind: str, data: dict[str, Any]) -> Event:
        """
        Tell C{owner} (a user id, or L{EVERYONE}) that C{kind} happened.
        A failing subscriber is logged and does not stop the others.
        """
        event = Event(self._next_id, kind, owner, data)
        self._next_id += 1
        self._recent.append(event)
        for user_id, subscriber in list(self._subscribers.values()):
            if event.concerns(user_id):
                try:
                    subscriber(event)
                except Exception:
                    log.failure("an event subscriber failed on {kind}", kind=kind)
        return event

    def subscribe(self, user_id: str, subscriber: Subscriber) -> Callable[[], None]:
        """
        Call C{subscriber} with every event for C{user_id} from now on; the
        returned function unsubscribes.
        """
        token = self._next_token
        self._next_token += 1
        self._subscribers[token] = (user_id, subscriber)
        return lambda: self._subscribers.pop(token, None) and None

    def watch(self, subscriber: Subscriber) -> Callable[[], None]:
        """
        Call C{subscriber} with every event, whoever it is for (the edge's
        own components listen this way); the returned function stops it.
        """
        return self.subscribe(_ALL, subscriber)

    def since(self, user_id: str, last_id: int) -> Iterator[Event] | None:
        """
        The events for C{user_id} after C{last_id}, or C{None} when the
        history no longer reaches back that far (or C{last_id} is from an
        earlier run of the edge).
        """
        if last_id > self.last_id:
            return None
        oldest = self._recent[0].id if self._recent else self._next_id
        if last_id < oldest - 1:
            return None
        return (e for e in self._recent if e.id > last_id and e.concerns(user_id))

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
