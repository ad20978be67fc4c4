"""
Jobs at the edge, live: the log tails of running jobs (L{tail}), kept from
the cloud's C{job.log} batches and told on C{/api/events} (L{live}), and
the read routes (L{routes}).  Built by L{build_job_watch}.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.application.service import MultiService

from relay.db import Database
from relay.edge.config import JobsSection
from relay.edge.events import EventHub
from relay.edge.identity import Identity
from relay.edge.jobs.live import ASK_EVERY, JobLogHousekeeping, JobLogReceiver
from relay.edge.jobs.routes import JobRoutes
from relay.edge.jobs.tail import SCHEMA, LogTails
from relay.job_messages import register_types
from relay.link.bridge import ILinkEnd

__all__ = ["SCHEMA", "JobWatch", "build_job_watch"]


class JobWatch(MultiService):
    """
    The component: its tails, its inbox handler and its housekeeping timer.
    """

    def __init__(self, tails: LogTails, receiver: JobLogReceiver, db: Database) -> None:
        super().__init__()
        self.tails = tails
        self.receiver = receiver
        self._db = db

    def add_routes(self, app: Klein, identity: Identity) -> None:
        JobRoutes(identity, self._db, self.tails).routes(app)


def build_job_watch(
    config: JobsSection, reactor: Any, db: Database, bridge: ILinkEnd, hub: EventHub, edge_id: str
) -> JobWatch:
    """
    The edge's live jobs from the C{[jobs]} table: registers C{job.log}
    with the bridge's catalogue and inbox.
    """
    register_types(bridge.catalogue)
    tails = LogTails(reactor, limit=config.log_tail, gap_wait=config.gap_wait)
    receiver = JobLogReceiver(tails, hub, reactor.callFromThread, edge_id=edge_id, outbox=bridge.outbox)
    receiver.register(bridge.inbox)
    watch = JobWatch(tails, receiver, db)
    JobLogHousekeeping(db, receiver, reactor, interval=min(ASK_EVERY, max(0.5, config.gap_wait / 4)),
                       wake=bridge.outbox.wake).setServiceParent(watch)
    return watch
