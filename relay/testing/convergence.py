"""
A cloud and edges on the real link (a real RabbitMQ), wired the way
L{relay.cloud.tap} and L{relay.edge.tap} wire their registry and replica
parts, for convergence tests with real faults: connections dropped by
either end, edges stopped and started again on the same database.

Unlike L{relay.testing.registry} (a fake link, a C{Clock}), everything here
runs on a real reactor: tests await conditions with L{eventually}, and a
plain (non-trial) test runs its coroutine with L{spin}.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from relay.cloud import registry as registry_schema
from relay.cloud import sync
from relay.cloud.registry.component import build_registry
from relay.config import LinkConfig
from relay.db import Database
from relay.edge.auth import Principal
from relay.edge.config import WebSection
from relay.edge.replica import SCHEMA as REPLICA_SCHEMA
from relay.edge.replica import position
from relay.edge.replica.component import build_replica
from relay.edge.uploads import store as uploads_store
from relay.health import Health
from relay.link import inbox, outbox
from relay.link.backoff import Backoff
from relay.link.bridge import build_link
from relay.link.envelope import TO_CLOUD, to_edge
from relay.metrics import Metrics
from relay.process import InOrder
from relay.replication import dump
from relay.testing.reactor import inline
from relay.testing.registry import TEST_COST, RecordedEffects, catalogue

T = TypeVar("T")


def quick_backoff(reactor: Any) -> Backoff:
    """
    Reconnect within a fraction of a second: tests drop links often.
    """
    return Backoff(reactor, initial=0.05, cap=0.5, healthy_after=2.0)


def link_config(url: str) -> LinkConfig:
    """
    The C{[link]} table of a test's node: a short heartbeat, health never
    failing on a link the test drops on purpose.
    """
    return LinkConfig(url=url, heartbeat=5, unhealthy_after=0)


def spin(reactor: Any, work: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """
    Run the reactor until C{work()} finishes and return its result (or
    raise its error), the way trial runs each test: C{reactor.run()}, then
    C{reactor.crash()} once the work is done.  For plain functions (a
    hypothesis test) that have no reactor running; the work is cancelled
    after C{timeout} seconds.
    """
    # Not Deferred.addTimeout: work that swallows the cancellation (a
    # service tree logs its children's failures) must still fail here.
    d: Deferred[T]
    timer = reactor.callLater(timeout, lambda: d.cancel())
    before = set(reactor.getDelayedCalls())

    def left() -> list[Any]:
        return [call for call in reactor.getDelayedCalls() if call not in before and call.active()]

    async def _no_calls_left() -> str | None:
        calls = left()
        return f"calls left in the reactor: {[call.func for call in calls]}" if calls else None

    async def whole() -> T:
        result = await work()
        # Timers that services set while stopping (a retry a second from
        # now) may run out; anything still pending after that is a leak.
        await eventually(reactor, _no_calls_left, 3.0, 0.05)
        return result

    results: list[Any] = []
    d = Deferred.fromCoroutine(whole())
    d.addBoth(results.append)
    if not results:
        d.addBoth(lambda _: reactor.crash())
        reactor.run()
    if timer.active():
        timer.cancel()
    elif results:
        results[0] = Failure(AssertionError(f"the work took longer than {timeout}s"))
    # What trial's janitor does after a test class: stop the reactor's
    # thread pool (the resolver started it; its threads would keep the
    # process from exiting), and complain about calls left behind.
    if reactor.threadpool is not None:
        reactor._stopThreadPool()
    leaked = left()
    for call in leaked:
        call.cancel()
    if not results:
        raise AssertionError("the reactor stopped before the work finished")
    result = results[0]
    if leaked and not isinstance(result, Failure):
        raise AssertionError(f"the work left calls in the reactor: {[call.func for call in leaked]}")
    if isinstance(result, Failure):
        result.raiseException()
    return result  # type: ignore[no-any-return]


async def eventually(
    reactor: Any, check: Callable[[], Awaitable[str | None]], timeout: float, step: float = 0.1
) -> None:
    """
    Poll C{check} (which says what is still wrong, or C{None}) until it is
    satisfied; fail with its last complaint after C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    while True:
        complaint = await check()
        if complaint is None:
            return
        if reactor.seconds() >= deadline:
            raise AssertionError(f"not within {timeout}s: {complaint}")
        await deferLater(reactor, step, lambda: None)


class CloudNode:
    """
    The cloud's registry, commands and sync on the real link (no transfer
    stage, no status listener).
    """

    def __init__(self, reactor: Any, path: Path, url: str, connection_name: str, *,
                 publish_interval: float = 0.2) -> None:
        self.connection_name = connection_name
        self.root = InOrder()
        self.db = Database(reactor, path, schemas=[outbox.SCHEMA, inbox.SCHEMA, registry_schema.SCHEMA, sync.SCHEMA])
        self.db.setServiceParent(self.root)
        metrics = Metrics()
        self.bridge = build_link(
            link_config(url), reactor, self.db, metrics, Health(reactor, "cloud", metrics), catalogue(),
            source="cloud", consume=TO_CLOUD, declare_destinations=True, backoff=quick_backoff(reactor),
            connection_name=connection_name,
        )
        self.bridge.setServiceParent(self.root)
        component = build_registry(
            reactor, self.db, self.bridge, RecordedEffects(), publish_interval=publish_interval
        )
        component.setServiceParent(self.root)
        self.registry = component.registry
        self.responder = component.responder

    def start(self) -> None:
        self.root.startService()

    async def stop(self) -> None:
        await self.root.stopService()

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        return await self.db.run(work, *args)

    async def dump(self) -> dict[str, Any]:
        return await self.db.run(dump)

    async def head(self) -> int:
        """
        The log's head once every committed event is numbered.
        """
        return await self.db.run(sync.sequence)

    def drop(self) -> None:
        self.bridge.link.drop("the test drops the cloud's link")


class EdgeNode:
    """
    One edge's replica, its sync timer and its command issuer on the real
    link, on one database file; L{restart} stops the whole tree and builds
    a new one on the same file, as a restarted process would.
    """

    def __init__(self, reactor: Any, edge_id: str, path: Path, url: str, connection_name: str, *,
                 monitor_interval: float = 1.0) -> None:
        self.reactor = reactor
        self.edge_id = edge_id
        self.path = path
        self.url = url
        self.connection_name = connection_name
        self.monitor_interval = monitor_interval
        self.restarts = 0
        self._build()

    def _build(self) -> None:
        reactor = self.reactor
        self.root = InOrder()
        self.db = Database(reactor, self.path, schemas=[outbox.SCHEMA, inbox.SCHEMA, REPLICA_SCHEMA, uploads_store.SCHEMA])
        self.db.setServiceParent(self.root)
        metrics = Metrics()
        self.bridge = build_link(
            link_config(self.url), reactor, self.db, metrics, Health(reactor, "edge", metrics), catalogue(),
            source=f"edge:{self.edge_id}", consume=to_edge(self.edge_id),
            backoff=quick_backoff(reactor), connection_name=self.connection_name,
        )
        self.bridge.setServiceParent(self.root)
        the_replica = build_replica(
            self.edge_id, WebSection(), reactor, self.db, self.bridge, cpu=inline, cost=TEST_COST,
            monitor_interval=self.monitor_interval,
        )
        the_replica.setServiceParent(self.root)
        self.applier = the_replica.applier
        self.issuer = the_replica.issuer

    def start(self) -> None:
        self.root.startService()

    async def stop(self) -> None:
        await self.root.stopService()

    async def restart(self) -> None:
        """
        Stop the edge (unless it is stopped) and start a new one on its
        database.
        """
        if self.root.running:
            await self.stop()
        self.restarts += 1
        self._build()
        self.start()

    def drop(self) -> None:
        self.bridge.link.drop("the test drops the edge's link")

    async def issue(self, principal: Principal, type: str, fields: dict[str, Any]) -> str:
        """
        Issue a command as the edge's web routes would (raises L{Refused}
        when the replica already says no).
        """
        command_id = await self.db.run(self.issuer.issue, principal, type, fields)
        self.bridge.outbox.wake()
        return command_id

    async def send_raw(self, type: str, body: dict[str, Any]) -> None:
        """
        Put a command in the outbox without the edge's checks (what a stale
        or compromised edge might send, or the same command sent again).
        """
        await self.db.run(lambda c: self.bridge.outbox.put(c, type, body, to=TO_CLOUD))
        self.bridge.outbox.wake()

    async def pending_bodies(self) -> list[tuple[str, dict[str, Any]]]:
        rows = await self.db.run(lambda c: c.execute("SELECT type, body FROM pending_commands").fetchall())
        return [(row[0], json.loads(row[1])) for row in rows]

    async def dump(self) -> dict[str, Any]:
        return await self.db.run(dump, "replica_")

    async def state(self) -> tuple[int, bool, int]:
        """
        The replica's position, whether it is synced, and how many of the
        edge's commands still await an answer.
        """
        def read(conn: Any) -> tuple[int, bool, int]:
            at = position(conn)
            waiting = conn.execute("SELECT count(*) FROM pending_commands WHERE state = 'pending'").fetchone()[0]
            return at.applied, at.synced, int(waiting)

        return await self.db.run(read)


async def dead_letters(db: Database) -> int:
    return int(await db.run(lambda c: c.execute("SELECT count(*) FROM dead_letter").fetchone()[0]))


async def difference(cloud: CloudNode, edges: list[EdgeNode]) -> str | None:
    """
    What keeps the edges from having converged on the registry, or
    C{None}: every replica at the cloud's head, equal to the registry row
    for row, and no command of theirs unanswered.
    """
    head = await cloud.head()
    expected = await cloud.dump()
    for edge in edges:
        applied, synced, waiting = await edge.state()
        if not synced or applied != head:
            return f"edge {edge.edge_id} at {applied} (synced: {synced}), the cloud at {head}"
        if waiting:
            return f"edge {edge.edge_id} waits for the answer to {waiting} commands"
        got = await edge.dump()
        if got != expected:
            tables = [name for name in expected if got.get(name) != expected[name]]
            return f"edge {edge.edge_id} differs from the registry in {tables}"
    return None
