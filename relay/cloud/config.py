"""
The cloud side's configuration, as read from C{etc/cloud.toml}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay.config import LinkConfig, LogConfig, ServerEndpoint


@dataclass(frozen=True)
class CloudSection:
    """
    The C{[cloud]} table.
    """

    #: Where the health and metrics listener listens.
    listen: ServerEndpoint = "tcp:8081:interface=127.0.0.1"
    #: Where the cloud keeps its state; relative paths are relative to the
    #: working directory.
    data_dir: Path = Path("var/cloud")


@dataclass(frozen=True)
class S3Section:
    """
    The C{[s3]} table: the bucket the cloud side keeps objects in.  Only the
    cloud holds credentials; edges get presigned URLs.
    """

    bucket: str = "relay"
    region: str = "us-east-1"
    #: Empty for AWS itself; a URL for an S3-compatible server.
    endpoint_url: str = ""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    #: A TOML file with C{access_key_id} and C{secret_access_key}; empty to
    #: use the AWS default chain (instance role, environment).
    credentials_file: str = ""


@dataclass(frozen=True)
class CloudConfig:
    """
    Everything C{relay-cloud} is configured with.
    """

    cloud: CloudSection = field(default_factory=CloudSection)
    s3: S3Section = field(default_factory=S3Section)
    link: LinkConfig = field(default_factory=LinkConfig)
    log: LogConfig = field(default_factory=LogConfig)
