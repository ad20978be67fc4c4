"""
C{twistd relay-cloud}: the command-line options and the cloud's service tree.

This is the only module of the cloud side that reads the command line and
the configuration file, and the only one that touches the global reactor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from klein import Klein
from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.web.server import Site

from relay.audit import AuditLog
from relay.cloud import downloads as downloads_component
from relay.cloud import registry, sync, transfers
from relay.cloud.commands import Effects
from relay.cloud.config import CloudConfig, database_target
from relay.cloud.downloads import build_downloads
from relay.cloud.jobs import component as jobs_component
from relay.cloud.jobs.component import build_jobs
from relay.cloud.receiver.component import build_receiver, token_issuer
from relay.cloud.registry.component import build_registry
from relay.cloud.transfers import RegistryFiles, build_objects, build_transfers
from relay.config import TapOptions, config_path, load_or_exit, prepare_data_dir, relative_to
from relay.db import Database, Schema
from relay.health import DatabaseHealth, Health
from relay.link import inbox, outbox
from relay.link.bridge import build_link
from relay.link.envelope import JOBS, TO_CLOUD
from relay.logs import LogFormat
from relay.metrics import Metrics
from relay.process import GracefulStop, InOrder
from relay.sync_messages import sync_catalogue
from relay.threads import Threads

DEFAULT_CONFIG = "etc/cloud.toml"

#: Threads for hashing jobs' results, as many as the reactor's own pool had.
CPU_THREADS = 10

#: The schemas of every component with tables in the cloud's database.
SCHEMAS: list[Schema] = [
    outbox.SCHEMA, inbox.SCHEMA, registry.SCHEMA, sync.SCHEMA, transfers.SCHEMA, jobs_component.SCHEMA,
    jobs_component.LOG_REQUESTS_SCHEMA, downloads_component.SCHEMA,
]


class Options(TapOptions):
    """
    C{twistd relay-cloud} options.  Each override replaces the key of the
    configuration file named in its help.
    """

    optParameters = [
        ["config", "c", None, f"configuration file [default: $RELAY_CONFIG or {DEFAULT_CONFIG}]"],
        ["listen", "l", None, "endpoint for health and metrics (overrides cloud.listen)"],
        ["data-dir", "d", None, "state directory (overrides cloud.data_dir)"],
        ["amqp-url", None, None, "the broker's amqp:// or amqps:// URL (overrides link.url)"],
    ]

    overriding = {
        "listen": "cloud.listen",
        "data-dir": "cloud.data_dir",
        "amqp-url": "link.url",
    }


def makeService(options: Options) -> IService:
    """
    Read the configuration and build the cloud's service tree.
    """
    config = load_or_exit(
        CloudConfig, config_path(options["config"], DEFAULT_CONFIG), options.overrides(), "relay-cloud"
    )
    from twisted.internet import reactor

    service = cloud_service(config, reactor)
    GracefulStop(reactor).setServiceParent(service)
    return LogFormat(config.log.format, service)


def cloud_service(config: CloudConfig, reactor: Any) -> MultiService:
    """
    The cloud's services, in start order (they stop in reverse).
    """
    data_dir = prepare_data_dir(relative_to(Path.cwd(), config.cloud.data_dir))
    root = InOrder()
    # SQLite in the data directory, or the PostgreSQL of registry.dsn.
    db = Database(reactor, database_target(config, Path.cwd()), schemas=SCHEMAS)
    db.setServiceParent(root)

    metrics = Metrics()
    health = Health(reactor, "cloud", metrics)
    bridge = build_link(
        config.link, reactor, db, metrics, health, sync_catalogue(), source="cloud", consume=TO_CLOUD,
        declare=[JOBS], declare_destinations=True,
    )
    bridge.setServiceParent(root)
    health.add_section("database", DatabaseHealth(db, reactor))
    objects = build_objects(config.s3, reactor, Path.cwd())
    objects.setServiceParent(root)
    # Jobs: the commands' effects queue them; workers run them (their
    # leases write through the registry served below).
    the_registry = registry.Registry(sync.EventLog(reactor), reactor)
    cpu = Threads(reactor, "cpu", CPU_THREADS)
    cpu.setServiceParent(root)
    jobs = build_jobs(config.jobs, reactor, db, bridge, the_registry, objects, cpu.run, Path.cwd())
    # Downloads: presigned GET URLs for the edges; deleted files' objects go.
    downloads = build_downloads(config.s3, reactor, db, bridge, objects)
    # The registry: edge commands and sync requests arrive through the
    # inbox; the publisher sends each edge the events it has not had.
    audit = AuditLog(relative_to(data_dir, config.log.audit), reactor)
    build_registry(
        reactor, db, bridge, Effects(jobs.effects, downloads.effects), registry=the_registry, audit=audit
    ).setServiceParent(root)
    # The transfer stage: edges' multipart uploads, registered in the
    # registry when complete.
    cloud_transfers = build_transfers(config.s3, reactor, db, bridge, RegistryFiles(the_registry), objects,
                                      token_issuer(config.receiver))
    cloud_transfers.setServiceParent(root)
    # The tus receiver edges send files to (transfer.mode = "tus").
    receiver = build_receiver(config.receiver, reactor, db, objects, cloud_transfers, metrics)
    if receiver is not None:
        receiver.setServiceParent(root)
    downloads.setServiceParent(root)
    jobs.setServiceParent(root)
    status = Klein()
    health.routes(status)
    listener = strports.service(config.cloud.listen, Site(status.resource()), reactor=reactor)
    listener.setServiceParent(root)
    return root
