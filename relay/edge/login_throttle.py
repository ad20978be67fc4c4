"""
Slows down password guessing at the edge: after C{attempts} failed logins
for one name within C{window} seconds, further logins for that name are
refused until the oldest failure ages out.  Kept in memory (a restart
forgets it; the scrypt cost still bounds the guessing rate).
"""

from __future__ import annotations

from collections import OrderedDict, deque

from twisted.internet.interfaces import IReactorTime


class LoginThrottle:
    """
    Failed logins per name, with an injected clock.

    @param names: at most this many names are tracked (the least recently
        failed are forgotten first), so memory stays bounded.
    """

    def __init__(
        self, clock: IReactorTime, *, attempts: int = 10, window: float = 300.0, names: int = 10_000
    ) -> None:
        self._clock = clock
        self._attempts = attempts
        self._window = window
        self._names = names
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, name: str) -> deque[float]:
        failures = self._failures.get(name)
        if failures is None:
            return deque()
        cutoff = self._clock.seconds() - self._window
        while failures and failures[0] <= cutoff:
            failures.popleft()
        if not failures:
            del self._failures[name]
        return failures

    def blocked(self, name: str) -> bool:
        return len(self._recent(name)) >= self._attempts

    def failed(self, name: str) -> None:
        failures = self._recent(name)
        failures.append(self._clock.seconds())
        self._failures[name] = failures
        self._failures.move_to_end(name)
        while len(self._failures) > self._names:
            self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)
