"""
The registry and its sync as one component: the event log, the
L{Registry} that writes it, the inbox handlers of the edges' commands and
sync requests, and the timer that publishes each edge its events.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService

from relay.audit import AuditLog
from relay.cloud.commands import CloudCommands, ICommandEffects
from relay.cloud.registry.store import Registry
from relay.cloud.sync import EventLog, SyncPublisher, SyncPublishing, SyncResponder
from relay.db import Database
from relay.link.bridge import ILinkEnd


class RegistrySync(MultiService):
    """
    The assembled component.  Its one child service, C{publishing}, sends
    the edges their events; everything else is done by inbox handlers.

    @ivar registry: the source of truth (jobs and the tools write through it).
    @ivar log: the registry's event log.
    @ivar publisher: one round of publishing (C{publishing} runs it on a
        timer; worlds without a timer call it by hand).
    """

    def __init__(
        self, registry: Registry, commands: CloudCommands, responder: SyncResponder, publisher: SyncPublisher,
        publishing: SyncPublishing,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.log = registry.log
        self.commands = commands
        self.responder = responder
        self.publisher = publisher
        self.publishing = publishing
        publishing.setServiceParent(self)


def build_registry(
    reactor: Any,
    db: Database,
    link: ILinkEnd,
    effects: ICommandEffects,
    *,
    registry: Registry | None = None,
    audit: AuditLog | None = None,
    publish_interval: float = 0.5,
) -> RegistrySync:
    """
    The registry and sync on C{link}, the one way the cloud's tap and the
    test worlds build them.

    @param effects: what the edges' commands set off besides the registry's
        own changes (the jobs' dispatch, deleted objects).
    @param registry: the L{Registry} to serve, when other components were
        built on it first (the jobs' leases write through it); by default a
        new one on a new event log.
    """
    if registry is None:
        registry = Registry(EventLog(reactor), reactor)
    commands = CloudCommands(registry, effects, audit)
    commands.register(link.inbox)
    responder = SyncResponder(link.outbox, reactor)
    responder.register(link.inbox)
    publisher = SyncPublisher(link.outbox, reactor)
    publishing = SyncPublishing(db, publisher, link.outbox, reactor, interval=publish_interval)
    return RegistrySync(registry, commands, responder, publisher, publishing)
