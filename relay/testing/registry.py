"""
A cloud (registry, commands, event log) and edges (replica, identity,
commands) assembled with the fake link of L{relay.testing.sync}, the way the
taps assemble them with the real one.  Tests drive time with a C{Clock} and
messages with L{InProcessLink}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from zope.interface import implementer

from relay.audit import AuditLog
from relay.cloud import registry as registry_schema
from relay.cloud import sync
from relay.cloud.commands import ICommandEffects
from relay.cloud.jobs.catalogue import publish_catalogue
from relay.cloud.registry.component import build_registry
from relay.credentials import ScryptCost, hash_password
from relay.edge import identity as identity_module
from relay.edge.auth import Principal
from relay.edge.config import WebSection
from relay.edge.downloads.cache import SCHEMA as CACHE_SCHEMA
from relay.edge.jobs.tail import SCHEMA as JOB_LOGS_SCHEMA
from relay.edge.replica import SCHEMA as REPLICA_SCHEMA
from relay.edge.replica.applier import IReplicaObserver
from relay.edge.replica.component import build_replica
from relay.edge.uploads import store as upload_store
from relay.jobkinds import CatalogueEntry
from relay.link.catalogue import Catalogue
from relay.link.envelope import TO_CLOUD, to_edge
from relay.replication import dump
from relay.sync_messages import sync_catalogue
from relay.testing.db import SynchronousDatabase
from relay.testing.reactor import inline
from relay.testing.sync import SCHEMA as FAKE_LINK_SCHEMA
from relay.testing.sync import Endpoint, FakeLink, InProcessLink

#: scrypt at a cost tests can afford by the hundred.
TEST_COST = ScryptCost(log_n=4, r=1, p=1)

#: A job kind for worlds without the jobs component: any parameters, up to
#: 100 inputs (L{CloudSide.publish_kinds} puts it in the catalogue).
RENDER = CatalogueEntry("render", "Renders what it is given (a test kind).", {"type": "object"})


@implementer(ICommandEffects)
class RecordedEffects:
    """
    The commands' effects as a list (C{(what, id)}), for worlds without
    the jobs component.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def job_queued(self, conn: Any, job: Any) -> None:
        self.calls.append(("job_queued", job["id"]))

    def job_cancelled(self, conn: Any, job: Any) -> None:
        self.calls.append(("job_cancelled", job["id"]))

    def file_deleted(self, conn: Any, file: Any) -> None:
        self.calls.append(("file_deleted", file["id"]))


_CATALOGUE: Catalogue | None = None


def catalogue() -> Catalogue:
    """
    The registry's message types (built once: checking the schemas is slow).
    """
    global _CATALOGUE
    if _CATALOGUE is None:
        _CATALOGUE = sync_catalogue()
    return _CATALOGUE


class CloudSide:
    """
    The cloud's registry components on one database, with a fake link.
    """

    def __init__(
        self, target: Path | str, clock: Clock, link: InProcessLink | None = None, *, dedupe: bool = True,
        audit: AuditLog | None = None,
    ) -> None:
        self.clock = clock
        self.db = SynchronousDatabase(target, [registry_schema.SCHEMA, sync.SCHEMA, FAKE_LINK_SCHEMA])
        self.link_end = FakeLink("cloud", self.db, catalogue(), clock, dedupe=dedupe)
        self.outbox = self.link_end.outbox
        self.inbox = self.link_end.inbox
        self.effects = RecordedEffects()
        self.component = build_registry(clock, self.db, self.link_end, self.effects, audit=audit)
        self.registry = self.component.registry
        self.log = self.component.log
        self.commands = self.component.commands
        self.responder = self.component.responder
        self.publisher = self.component.publisher
        if link is not None:
            link.attach(Endpoint(TO_CLOUD, self.db, self.outbox, self.inbox))

    def run(self, work: Any, *args: Any) -> Any:
        return self.db.run_now(work, *args)

    def publish(self) -> int:
        """
        One round of the publishing timer: number, then send.
        """
        self.db.run_now(sync.sequence)
        return int(self.db.run_now(self.publisher.publish))

    def publish_kinds(self, *entries: CatalogueEntry) -> int:
        """
        Make the catalogue of job kinds C{entries} (as a restarted cloud
        does with its configured kinds); returns how many rows changed.
        """
        return int(self.run(publish_catalogue, self.log, list(entries)))

    def dump(self) -> dict[str, Any]:
        return self.db.run_now(dump)

    def add_user(self, name: str, password: str, *, is_admin: bool = False) -> dict[str, Any]:
        password_hash = hash_password(password, TEST_COST)
        return dict(self.run(lambda c: self.registry.add_user(c, name, password_hash, is_admin=is_admin)))

    def user(self, name: str) -> Any:
        return self.run(self.registry.user_by_name, name)

    def default_project(self, user_id: str) -> str:
        row = self.run(
            lambda c: c.execute("SELECT id FROM projects WHERE owner_id = ? AND is_default = 1", (user_id,)).fetchone()
        )
        return str(row[0])

    def close(self) -> None:
        self.db.close()


class EdgeSide:
    """
    One edge's replica components on one database, with a fake link.
    L{restart} builds them anew on the same database, as a restarted
    process would.
    """

    def __init__(
        self, edge_id: str, target: Path | str, clock: Clock, link: InProcessLink | None = None, *,
        dedupe: bool = True, observer: IReplicaObserver | None = None,
    ) -> None:
        self.observer = observer
        self.edge_id = edge_id
        self.target = target
        self.clock = clock
        self.link = link
        self.dedupe = dedupe
        self._build()

    def _build(self) -> None:
        self.db = SynchronousDatabase(
            self.target,
            [REPLICA_SCHEMA, identity_module.SCHEMA, upload_store.SCHEMA, FAKE_LINK_SCHEMA, JOB_LOGS_SCHEMA,
             CACHE_SCHEMA],
        )
        self.link_end = FakeLink(f"edge:{self.edge_id}", self.db, catalogue(), self.clock, dedupe=self.dedupe)
        self.outbox = self.link_end.outbox
        self.inbox = self.link_end.inbox
        self.replica = build_replica(
            self.edge_id, WebSection(), self.clock, self.db, self.link_end, observer=self.observer, cpu=inline,
            cost=TEST_COST,
        )
        self.applier = self.replica.applier
        self.issuer = self.replica.issuer
        self.identity = self.replica.identity
        if self.link is not None:
            self.link.attach(Endpoint(to_edge(self.edge_id), self.db, self.outbox, self.inbox))

    def restart(self) -> None:
        self.db.close()
        self._build()

    def tick(self, hello: bool = False) -> bool:
        return bool(self.db.run_now(self.applier.tick, hello))

    def issue(self, principal: Principal, type: str, **fields: Any) -> str:
        return str(self.db.run_now(self.issuer.issue, principal, type, fields))

    def dump(self) -> dict[str, Any]:
        return self.db.run_now(dump, "replica_")

    def close(self) -> None:
        self.db.close()
