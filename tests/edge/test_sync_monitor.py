"""
relay.edge.replica.SyncMonitor: asks only while the link is up, and says
hello as soon as it comes back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from relay.edge.replica.monitor import SyncMonitor


class Applier:
    def __init__(self) -> None:
        self.ticks: list[bool] = []

    def tick(self, conn: Any, hello: bool = False) -> bool:
        self.ticks.append(hello)
        return hello


class Database:
    def run(self, work: Any, *args: Any) -> Deferred[Any]:
        return succeed(work(None, *args))


class Outbox:
    woken = 0

    def wake(self) -> None:
        self.woken += 1


def test_nothing_is_asked_while_the_link_is_down_and_hello_comes_with_it() -> None:
    up = [False]
    applier, outbox = Applier(), Outbox()
    monitor = SyncMonitor(Database(), applier, outbox, connected=lambda: up[0])  # type: ignore[arg-type]
    monitor.startService()  # the first tick runs at once
    monitor.tick()
    assert applier.ticks == []
    # The bridge calls link_up once the connection counts as connected.
    up[0] = True
    monitor.link_up()
    assert applier.ticks == [True]
    assert outbox.woken == 1
    monitor.tick()
    assert applier.ticks == [True, False]
    # Down and up again: the next hello comes with it, not before.
    up[0] = False
    monitor.tick()
    assert applier.ticks == [True, False]
    up[0] = True
    monitor.link_up()
    assert applier.ticks == [True, False, True]
    monitor.stopService()
