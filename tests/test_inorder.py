"""
relay.process.InOrder: the service tree stops one child at a time, last
added first, so nothing still at work finds the database closed under it.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from relay.process import InOrder


class Slow(Service):
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events
        self.stopping: Deferred[None] | None = None

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.events.append(f"stop {self.name}")
        self.stopping = Deferred()
        self.stopping.addCallback(lambda _: self.events.append(f"stopped {self.name}"))
        return self.stopping


def started_tree(events: list[str]) -> tuple[InOrder, Slow, Slow]:
    """
    A started InOrder with a database, then a worker that depends on it.
    """
    root = InOrder()
    database, worker = Slow("database", events), Slow("worker", events)
    database.setServiceParent(root)
    worker.setServiceParent(root)
    root.startService()
    return root, database, worker


def test_children_stop_one_at_a_time_in_reverse_order() -> None:
    events: list[str] = []
    root, database, worker = started_tree(events)

    done = root.stopService()
    assert events == ["stop worker"]
    assert worker.stopping is not None
    worker.stopping.callback(None)
    assert events == ["stop worker", "stopped worker", "stop database"]
    assert not done.called
    assert database.stopping is not None
    database.stopping.callback(None)
    assert done.called
    assert not root.running


def test_a_child_that_fails_to_stop_does_not_keep_the_others_running() -> None:
    events: list[str] = []
    root, database, worker = started_tree(events)

    done = root.stopService()
    assert worker.stopping is not None
    worker.stopping.errback(RuntimeError("worker broke"))
    assert events[-1] == "stop database"
    assert database.stopping is not None
    database.stopping.callback(None)
    assert done.called


def test_stopping_a_stopped_tree_again_is_immediate() -> None:
    events: list[str] = []
    root = InOrder()
    worker = Slow("worker", events)
    worker.setServiceParent(root)
    root.startService()
    done = root.stopService()
    assert worker.stopping is not None
    worker.stopping.callback(None)
    assert done.called
    again = root.stopService()
    assert again.called
    assert events == ["stop worker", "stopped worker"]
