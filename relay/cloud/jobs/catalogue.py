"""
The catalogue of job kinds, published to the edges.

The registry's C{job_kinds} table is kept equal to the kinds of the
configuration (L{publish_catalogue}): each kind added or changed is logged
as a C{job_kind.put} event, each kind no longer configured as a
C{job_kind.delete}, and sync carries them to every edge like any other
row (snapshots included), so an edge that was away, restarted or new
converges on the catalogue too.  L{CataloguePublication} does this when a
dispatching cloud process starts, that is, each time its configuration
may have changed.  Every process that dispatches must have the same kinds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from relay.cloud.jobs.kinds import JobKind
from relay.cloud.sync import EventLog
from relay.db import Database
from relay.jobkinds import CatalogueEntry
from relay.replication import JOB_KINDS, encode_json


def entries(kinds: Mapping[str, JobKind]) -> list[CatalogueEntry]:
    return [kind.catalogue_entry(name) for name, kind in sorted(kinds.items())]


def publish_catalogue(conn: Any, log: EventLog, catalogue: Sequence[CatalogueEntry]) -> int:
    """
    Make the C{job_kinds} table hold C{catalogue} exactly, logging each
    change; returns how many rows changed (none when it already did).
    """
    columns = ", ".join(JOB_KINDS.columns)
    current = {
        row["name"]: JOB_KINDS.to_wire(row)
        for row in conn.execute(f"SELECT {columns} FROM job_kinds")
    }
    wanted = {entry.name: entry.to_wire() for entry in catalogue}
    changed = 0
    marks = ", ".join("?" for _ in JOB_KINDS.columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in JOB_KINDS.columns if c != "name")
    for name, data in sorted(wanted.items()):
        if name in current and encode_json(current[name]) == encode_json(data):
            continue
        conn.execute(
            f"INSERT INTO job_kinds ({columns}) VALUES ({marks}) ON CONFLICT (name) DO UPDATE SET {updates}",
            JOB_KINDS.to_params(data),
        )
        log.put(conn, JOB_KINDS, (name,))
        changed += 1
    for name in sorted(set(current) - set(wanted)):
        conn.execute("DELETE FROM job_kinds WHERE name = ?", (name,))
        log.delete(conn, JOB_KINDS, (name,))
        changed += 1
    return changed


class CataloguePublication(Service):
    """
    Publishes the configured kinds once the process starts, trying again
    every C{retry} seconds until the database takes them.
    """

    log = Logger()

    def __init__(
        self, reactor: Any, db: Database, log: EventLog, kinds: Mapping[str, JobKind], *, retry: float = 5.0
    ) -> None:
        self._reactor = reactor
        self._db = db
        self._events = log
        self._catalogue = entries(kinds)
        self._retry = retry
        self._call: Any = None
        #: Fires once the catalogue is published (for tests and operators).
        self.published: Deferred[int] = Deferred()

    def startService(self) -> None:
        super().startService()
        self._attempt()

    def _attempt(self) -> None:
        self._call = None
        Deferred.fromCoroutine(self._publish())

    async def _publish(self) -> None:
        try:
            changed = await self._db.run(publish_catalogue, self._events, self._catalogue)
        except Exception:
            self.log.failure("could not publish the catalogue of job kinds; trying again")
            if self.running:
                self._call = self._reactor.callLater(self._retry, self._attempt)
            return
        self.log.info(
            "catalogue of {count} job kinds published ({changed} changed)",
            count=len(self._catalogue), changed=changed,
        )
        if not self.published.called:
            self.published.callback(changed)

    def stopService(self) -> None:
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
