"""
The replica and the identity checked against it, as one component: the
applier of the cloud's events, the timer that keeps asking for them, the
issuer of the edge's commands, and logins, sessions and API keys (scrypt
on a small pool of its own, behind the login throttle's queue).
"""

from __future__ import annotations

from typing import Any

from relay.audit import AuditLog
from relay.credentials import DEFAULT_COST, ScryptCost
from relay.db import Database
from relay.edge.config import WebSection
from relay.edge.identity import Identity
from relay.edge.login_throttle import LoginThrottle
from relay.edge.replica.applier import IReplicaObserver, ReplicaApplier
from relay.edge.replica.monitor import SyncMonitor
from relay.edge.replica.pending import CommandIssuer
from relay.link.bridge import ILinkEnd
from relay.process import InOrder
from relay.threads import Blocking, Threads


class Replica(InOrder):
    """
    The assembled component.  Its services: the scrypt pool (unless one
    was handed in) and the L{SyncMonitor}.

    @ivar cpu: runs password checks (and the API's other CPU work).
    """

    def __init__(
        self, applier: ReplicaApplier, monitor: SyncMonitor, issuer: CommandIssuer, identity: Identity,
        cpu: Blocking,
    ) -> None:
        super().__init__()
        self.applier = applier
        self.monitor = monitor
        self.issuer = issuer
        self.identity = identity
        self.cpu = cpu


def build_replica(
    edge_id: str,
    config: WebSection,
    reactor: Any,
    db: Database,
    link: ILinkEnd,
    *,
    observer: IReplicaObserver | None = None,
    cpu: Blocking | None = None,
    audit: AuditLog | None = None,
    cost: ScryptCost = DEFAULT_COST,
    monitor_interval: float = 5.0,
) -> Replica:
    """
    The replica and identity on C{link}, the one way the edge's tap and the
    test worlds build them.

    @param config: the C{[web]} table (the login throttle, the scrypt pool).
    @param observer: told about every change the applier makes (the API's
        live events).
    @param cpu: runs password checks; by default a pool of
        C{config.scrypt_threads} threads, a child of the component.
    @param cost: the scrypt cost of the passwords the identity hashes.
    """
    pool = None
    if cpu is None:
        pool = Threads(reactor, "scrypt", config.scrypt_threads)
        cpu = pool.run
    applier = ReplicaApplier(edge_id, link.outbox, reactor, observer=observer)
    applier.register(link.inbox)
    monitor = SyncMonitor(db, applier, link.outbox, interval=monitor_interval, connected=link.connected)
    link.when_up(monitor.link_up)
    throttle = LoginThrottle(
        reactor, free=config.login_free_attempts, delay=config.login_delay, cap=config.login_delay_cap,
        window=config.login_window, in_flight=config.login_queue,
    )
    identity = Identity(db, reactor, cpu, throttle=throttle, audit=audit, cost=cost)
    replica = Replica(applier, monitor, CommandIssuer(link.outbox, reactor), identity, cpu)
    if pool is not None:
        pool.setServiceParent(replica)
    monitor.setServiceParent(replica)
    return replica
