"""
Assembling the uploads component from its configuration: the spool and
its master key, the service, housekeeping, the routes, and the request
factory the edge's L{Site} must use so that upload bodies stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klein import Klein
from twisted.application.service import MultiService

from relay.config import relative_to
from relay.crypto import MasterKeyError, load_or_create_master_key
from relay.db import Database
from relay.edge.auth import IAuthenticator, IProjectAccess
from relay.edge.config import UploadsSection
from relay.edge.events import EventHub
from relay.edge.uploads.handoff import IUploadSink
from relay.edge.uploads.housekeeping import UploadHousekeeping
from relay.edge.uploads.resource import UploadRoutes
from relay.edge.uploads.service import UploadLimits, UploadService
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import UploadStore
from relay.metrics import Metrics
from relay.threads import Threads
from relay.tus.streaming import StreamingSettings, streaming_request_factory

PREFIX = "/files/"


@dataclass
class Uploads:
    """The assembled component; C{services} joins the edge's service tree."""

    service: UploadService
    routes: UploadRoutes
    housekeeping: UploadHousekeeping
    spool: Spool
    sink: IUploadSink
    request_factory: Any
    header_timeout: int

    def add_routes(self, app: Klein) -> None:
        self.routes.routes(app)

    def spool_health(self) -> dict[str, Any]:
        """
        The C{spool} section of C{/healthz}: not ok while the spool's disk
        has less free space than C{uploads.disk_reserve} (new uploads get
        507 then).
        """
        free, reserve = self.spool.free_bytes(), self.service.limits.disk_reserve
        fields: dict[str, Any] = {"ok": free >= reserve, "free_bytes": free, "reserve": reserve}
        if not fields["ok"]:
            fields["reason"] = f"{free} bytes free on the spool's disk, below uploads.disk_reserve ({reserve})"
        return fields

    def set_service_parent(self, parent: MultiService) -> None:
        self.service.setServiceParent(parent)
        self.housekeeping.setServiceParent(parent)


def build_uploads(
    config: UploadsSection,
    data_dir: Path,
    reactor: Any,
    db: Database,
    metrics: Metrics,
    authenticator: IAuthenticator,
    projects: IProjectAccess,
    sink: IUploadSink,
    events: EventHub | None = None,
    *,
    spool: Spool | None = None,
    store: UploadStore | None = None,
    threads: Threads | None = None,
) -> Uploads:
    """
    The uploads component from the C{[uploads]} table, the one way the
    edge's tap and the upload tests' harness build it.

    @param spool: the spool to receive into; by default the encrypted spool
        of C{uploads.spool_dir} with the master key of C{uploads.master_key}
        (created on first start).
    @param store: the uploads' records (by default in C{db}); the transfer
        stage is handed the same spool and store.
    @param threads: the pool for spool I/O (by default the service's own).
    """
    if spool is None:
        spool = open_spool(config, data_dir)
    limits = UploadLimits(
        max_size=config.max_size,
        user_quota=config.user_quota,
        disk_reserve=config.disk_reserve,
        expiry=float(config.expiry),
        lock_stale_after=config.lock_stale_after,
        lock_wait=config.lock_wait,
        max_unfinished=config.max_unfinished,
    )
    service = UploadService(
        reactor, store if store is not None else UploadStore(db), spool, sink, projects, limits, PREFIX,
        threads=threads, events=events,
    )
    routes = UploadRoutes(service, authenticator, config.cors_origins, PREFIX)
    housekeeping = UploadHousekeeping(service, config.housekeeping_interval, reactor)
    housekeeping.clock = reactor
    metrics.gauge("uploads_active", "Uploads receiving a body now.", lambda: len(service.locks))
    metrics.gauge("spool_free_bytes", "Free bytes on the spool's disk.", spool.free_bytes)
    factory = streaming_request_factory(
        StreamingSettings(reactor, PREFIX.rstrip("/").encode(), float(config.body_timeout))
    )
    return Uploads(service, routes, housekeeping, spool, sink, factory, config.header_timeout)


def open_spool(config: UploadsSection, data_dir: Path) -> Spool:
    """
    The encrypted spool of C{uploads.spool_dir}, with the master key of
    C{uploads.master_key} (created on first start; an unfinished key
    rotation stops the start).
    """
    spool_dir = relative_to(data_dir, config.spool_dir or Path("spool"))
    key_path = relative_to(data_dir, config.master_key or Path("spool.key"))
    if key_path.with_name(key_path.name + ".new").exists():
        raise SystemExit(f"relay-edge: a rotation of the spool master key {key_path} is unfinished; "
                         "run `relay spool rotate-key` again before starting")
    try:
        master_key = load_or_create_master_key(key_path, outside=spool_dir)
    except MasterKeyError as e:
        raise SystemExit(f"relay-edge: {e}") from None
    return Spool(spool_dir, master_key)
