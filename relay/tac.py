"""
What the C{.tac} files call: an Application holding the same service tree
the twistd plugin builds, with the configuration file from C{$RELAY_CONFIG}
(or the side's default) and the log format from the file's C{[log]} table.
"""

from __future__ import annotations

from typing import Literal

from twisted.application.service import Application
from twisted.python.components import Componentized

from relay.logs import LogFormat
from relay.process import GracefulStop


def application_for(side: Literal["edge", "cloud"]) -> Componentized:
    from twisted.internet import reactor

    from relay.config import config_path, load_or_exit

    if side == "edge":
        from relay.edge import tap as edge_tap
        from relay.edge.config import EdgeConfig

        edge_config = load_or_exit(EdgeConfig, config_path(None, edge_tap.DEFAULT_CONFIG), {}, "relay-edge")
        service, log_format = edge_tap.edge_service(edge_config, reactor), edge_config.log.format
    else:
        from relay.cloud import tap as cloud_tap
        from relay.cloud.config import CloudConfig

        cloud_config = load_or_exit(CloudConfig, config_path(None, cloud_tap.DEFAULT_CONFIG), {}, "relay-cloud")
        service, log_format = cloud_tap.cloud_service(cloud_config, reactor), cloud_config.log.format
    GracefulStop(reactor).setServiceParent(service)
    application = Application(f"relay-{side}")
    LogFormat(log_format, service).setServiceParent(application)
    return application
