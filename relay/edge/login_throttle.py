"""
Slows down password guessing at the edge, concurrent guesses included.

An attempt is reserved before the password is checked: it counts as a
failure of its account and of its address from the moment it starts, and
is taken back only if the password was right.  Each account and each
address may fail C{free} times; after that, each further attempt must wait
C{delay} seconds after the last failure, doubling with every failure up to
C{cap}.  Failures are forgotten C{window} seconds after the last one.
There is no hard lock: an attacker who keeps failing for one account only
makes it wait, and an address with no failures of its own (the owner's,
usually) is not held back by the account's failures at all.  At most
C{in_flight} attempts are checked at once (the scrypt queue stays short).

Kept in memory (a restart forgets it; the scrypt cost still bounds the
guessing rate), with at most C{keys} accounts and addresses remembered.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime


def address_group(host: str) -> str:
    """
    What counts as one address for limits: an IPv4 address, or an IPv6
    address's /64 (one subscriber's usual allocation: its many addresses
    are one client).  Anything else (a unix socket's name) as it is.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class _Failures:
    count: int
    last: float


class Throttled(Exception):
    """
    An attempt refused before it was checked; C{retry_after} is in whole
    seconds (the C{Retry-After} header).
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many attempts; try again in {retry_after} s")
        self.retry_after = retry_after


class Attempt:
    """
    A reserved attempt: call L{succeeded} or L{failed} once it is checked
    (an attempt never settled counts as failed).
    """

    def __init__(self, throttle: LoginThrottle, keys: tuple[str, ...]) -> None:
        self._throttle = throttle
        self._keys = keys
        self._settled = False

    def succeeded(self) -> None:
        if not self._settled:
            self._settled = True
            self._throttle._settle(self._keys, True)

    def failed(self) -> None:
        if not self._settled:
            self._settled = True
            self._throttle._settle(self._keys, False)


class LoginThrottle:
    """
    Failed attempts per account and per address, with an injected clock.
    """

    def __init__(
        self, clock: IReactorTime, *, free: int = 3, delay: float = 1.0, cap: float = 300.0,
        window: float = 900.0, in_flight: int = 32, keys: int = 20_000,
    ) -> None:
        self._clock = clock
        self._free = free
        self._delay = delay
        self._cap = cap
        self._window = window
        self._max_in_flight = in_flight
        self._keys = keys
        self._failures: OrderedDict[str, _Failures] = OrderedDict()
        self.in_flight = 0

    def reserve(self, name: str, address: str | None = None) -> Attempt:
        """
        Reserve an attempt for account C{name} from C{address}.

        @raise Throttled: when it must wait.
        """
        now = self._clock.seconds()
        name_key = "n:" + name
        address_key = None if address is None else "a:" + address_group(address)
        waits = [0.0]
        if self.in_flight >= self._max_in_flight:
            waits.append(1.0)
        address_failures = 0 if address_key is None else self._count(address_key, now)
        if address_key is not None:
            waits.append(self._wait(address_key, now))
        # An address that has not failed lately is not held back by the
        # account's failures: guessing elsewhere cannot lock the owner out.
        if address_key is None or address_failures > 0:
            waits.append(self._wait(name_key, now))
        wait = max(waits)
        if wait > 0:
            raise Throttled(max(1, math.ceil(wait)))
        keys = (name_key,) if address_key is None else (name_key, address_key)
        for key in keys:
            self._add(key, now)
        self.in_flight += 1
        return Attempt(self, keys)

    def _settle(self, keys: tuple[str, ...], succeeded: bool) -> None:
        self.in_flight -= 1
        if not succeeded:
            return
        name_key, *rest = keys
        self._failures.pop(name_key, None)
        for key in rest:  # the address keeps its other failures
            failures = self._failures.get(key)
            if failures is not None:
                failures.count -= 1
                if failures.count <= 0:
                    del self._failures[key]

    def _count(self, key: str, now: float) -> int:
        failures = self._failures.get(key)
        if failures is None:
            return 0
        if now - failures.last > self._window:
            del self._failures[key]
            return 0
        return failures.count

    def _wait(self, key: str, now: float) -> float:
        count = self._count(key, now)
        if count < self._free:
            return 0.0
        delay = min(self._cap, self._delay * 2 ** min(count - self._free, 32))
        return self._failures[key].last + delay - now

    def _add(self, key: str, now: float) -> None:
        failures = self._failures.get(key)
        if failures is None or now - failures.last > self._window:
            failures = self._failures[key] = _Failures(0, now)
        failures.count += 1
        failures.last = now
        self._failures.move_to_end(key)
        while len(self._failures) > self._keys:
            self._failures.popitem(last=False)
