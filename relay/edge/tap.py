"""
C{twistd relay-edge}: the command-line options and the edge's service tree.

This is the only module of the edge that reads the command line and the
configuration file, and the only one that touches the global reactor; every
object below it is handed what it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService

from relay.audit import AuditLog
from relay.config import TapOptions, config_path, load_or_exit, prepare_data_dir, relative_to
from relay.db import Database, Schema
from relay.edge import identity as identity_module
from relay.edge import replica
from relay.edge.auth import IAuthenticator, IProjectAccess
from relay.edge.config import EdgeConfig
from relay.edge.downloads import cache as download_cache
from relay.edge.downloads.service import build_downloads
from relay.edge.events import EventHub
from relay.edge.jobs import SCHEMA as JOB_LOGS_SCHEMA
from relay.edge.jobs import build_job_watch
from relay.edge.replica.component import build_replica
from relay.edge.transfer import journal as transfer_journal
from relay.edge.transfer.service import build_transfers
from relay.edge.uploads import store as upload_store
from relay.edge.uploads.component import build_uploads, open_spool
from relay.edge.uploads.handoff import IUploadSink
from relay.edge.uploads.store import UploadStore
from relay.edge.web.announcer import ReplicaAnnouncer
from relay.edge.web.api import api_routes
from relay.edge.web.app import EdgeWeb
from relay.edge.web.site import EdgeSite, ListenerLimits, ensure_open_files
from relay.health import DatabaseHealth, Health
from relay.link import inbox, outbox
from relay.link.bridge import build_link
from relay.link.envelope import to_edge
from relay.logs import LogFormat
from relay.metrics import Metrics
from relay.process import GracefulStop, InOrder
from relay.sync_messages import sync_catalogue

DEFAULT_CONFIG = "etc/edge.toml"

#: The schemas of every component with tables in the edge's database.
SCHEMAS: list[Schema] = [
    outbox.SCHEMA, inbox.SCHEMA, upload_store.SCHEMA, transfer_journal.SCHEMA,
    replica.SCHEMA, identity_module.SCHEMA, download_cache.SCHEMA, JOB_LOGS_SCHEMA,
]


class Options(TapOptions):
    """
    C{twistd relay-edge} options.  Each override replaces the key of the
    configuration file named in its help.
    """

    optParameters = [
        ["config", "c", None, f"configuration file [default: $RELAY_CONFIG or {DEFAULT_CONFIG}]"],
        ["listen", "l", None, "endpoint for the web UI and API (overrides edge.listen)"],
        ["data-dir", "d", None, "state directory (overrides edge.data_dir)"],
        ["edge-id", None, None, "this edge's name (overrides edge.id)"],
        ["amqp-url", None, None, "the broker's amqp:// or amqps:// URL (overrides link.url)"],
    ]

    overriding = {
        "listen": "edge.listen",
        "data-dir": "edge.data_dir",
        "edge-id": "edge.id",
        "amqp-url": "link.url",
    }


def makeService(options: Options) -> IService:
    """
    Read the configuration and build the edge's service tree.
    """
    config = load_or_exit(
        EdgeConfig, config_path(options["config"], DEFAULT_CONFIG), options.overrides(), "relay-edge"
    )
    from twisted.internet import reactor

    service = edge_service(config, reactor)
    GracefulStop(reactor).setServiceParent(service)
    return LogFormat(config.log.format, service)


def edge_service(
    config: EdgeConfig,
    reactor: Any,
    authenticator: IAuthenticator | None = None,
    projects: IProjectAccess | None = None,
    upload_sink: IUploadSink | None = None,
) -> MultiService:
    """
    The edge's services, in start order (they stop in reverse): the
    database first, the web listener last.  Tests (and .tac files) may
    hand in the identity seams and the transfer stage's upload sink.
    """
    ensure_open_files(config.web.min_open_files)
    data_dir = prepare_data_dir(relative_to(Path.cwd(), config.edge.data_dir))
    root = InOrder()
    db = Database(reactor, data_dir / "edge.db", schemas=SCHEMAS)
    db.setServiceParent(root)

    metrics = Metrics()
    health = Health(reactor, "edge", metrics)
    bridge = build_link(
        config.link, reactor, db, metrics, health, sync_catalogue(), source=f"edge:{config.edge.id}",
        consume=to_edge(config.edge.id),
    )
    bridge.setServiceParent(root)
    health.add_section("database", DatabaseHealth(db, reactor))
    # Live events for the browsers (/api/events): the replica's changes,
    # upload and transfer progress.
    hub = EventHub(first_id=int(reactor.seconds() * 1_000_000))
    # The replica of the cloud registry, and identity checked against it
    # (scrypt on a small pool of its own, behind the login throttle's
    # queue: a flood of logins cannot take the threads other work needs).
    audit = AuditLog(relative_to(data_dir, config.log.audit), reactor)
    the_replica = build_replica(
        config.edge.id, config.web, reactor, db, bridge, observer=ReplicaAnnouncer(hub, reactor), audit=audit
    )
    the_replica.setServiceParent(root)
    identity = the_replica.identity
    # Running jobs' logs and progress, live.
    job_watch = build_job_watch(config.jobs, reactor, db, bridge, hub, config.edge.id)
    job_watch.setServiceParent(root)
    authenticator = authenticator if authenticator is not None else identity
    projects = projects if projects is not None else identity
    # The transfer stage moves staged uploads to S3 (unless a test hands in
    # its own sink).
    # Both are built on the same spool and upload records.
    spool, records = open_spool(config.uploads, data_dir), UploadStore(db)
    transfers = None
    if upload_sink is None:
        transfers = build_transfers(config.transfer, reactor, db, bridge, metrics, spool, records, hub)
        upload_sink = transfers
    uploads = build_uploads(
        config.uploads, data_dir, reactor, db, metrics, authenticator, projects, upload_sink, events=hub,
        spool=spool, store=records,
    )
    uploads.set_service_parent(root)
    health.add_section("spool", uploads.spool_health)
    # Downloads: the cache (beside the spool), fetches from S3, prefetch.
    downloads = build_downloads(config.downloads, reactor, db, bridge, hub, data_dir, uploads.spool, metrics)
    downloads.setServiceParent(root)
    if transfers is not None:
        transfers.keep = downloads.keep_upload
        transfers.setServiceParent(root)
    web = EdgeWeb(health, relative_to(Path.cwd(), config.edge.web_dir))
    uploads.add_routes(web.app)
    identity.routes(web.app)
    downloads.routes(web.app, identity)
    job_watch.add_routes(web.app, identity)
    streams = api_routes(
        web.app, identity, db, the_replica.issuer, hub, bridge.outbox.wake,
        reactor, the_replica.cpu, link=bridge.link_state, streams_per_user=config.web.max_streams_per_user,
    )
    streams.setServiceParent(root)
    # Upload bodies stream to the spool instead of being buffered whole;
    # every other body is bounded before it is read (relay.edge.web.site).
    site = EdgeSite(web.app.resource(), listener_limits(config), requestFactory=uploads.request_factory,
                    timeout=uploads.header_timeout, reactor=reactor)
    listener = strports.service(config.edge.listen, site, reactor=reactor)
    listener.setServiceParent(root)
    return root


def listener_limits(config: EdgeConfig) -> ListenerLimits:
    """
    The web listener's limits, from C{[web]} and C{uploads.header_timeout}.
    """
    web = config.web
    return ListenerLimits(
        max_body=web.max_body, max_header_bytes=web.max_header_bytes, max_headers=web.max_headers,
        header_timeout=float(config.uploads.header_timeout), min_rate=web.min_rate,
        rate_window=web.rate_window, max_connections=web.max_connections,
        max_connections_per_address=web.max_connections_per_address,
    )
