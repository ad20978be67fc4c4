"""
The cloud side's configuration, as read from C{etc/cloud.toml}.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay.cloud.jobs.kinds import JobKind, check_kind_names
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
    #: The endpoint signed into the presigned URLs edges PUT parts to
    #: (empty: endpoint_url), e.g. an S3 Transfer Acceleration endpoint.
    presign_endpoint_url: str = ""
    #: Seconds a presigned part URL lives (at most 7 days).
    presign_expiry: int = 3600
    #: Threads for boto3 calls (each blocks one).
    max_threads: int = 16
    #: After completing an upload, read the object back and check its sha256
    #: (the per-part MD5s and the multipart ETag are checked anyway).
    verify_readback: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.presign_expiry <= 7 * 86400:
            raise ValueError(f"s3.presign_expiry: expected 1 to 604800 seconds, got {self.presign_expiry}")
        if not 1 <= self.max_threads <= 256:
            raise ValueError(f"s3.max_threads: expected 1 to 256, got {self.max_threads}")


@dataclass(frozen=True)
class ReceiverSection:
    """
    The C{[receiver]} table: the cloud's tus receiver for transfers
    (C{transfer.mode = "tus"} at the edges; C{docs/transfer.md}).  Without
    C{listen} this process runs none, and edges must use C{"direct"}.
    """

    #: Where it listens (C{ssl:...} for TLS), e.g. C{tcp:8090:interface=127.0.0.1}.
    listen: ServerEndpoint | None = None
    #: The address edges reach it at, up to and including C{/transfers/}
    #: (e.g. C{https://receiver.example/transfers/}).
    public_url: str = ""
    #: Partial uploads holding a part in memory at once (memory is at most
    #: this many parts, 8 MiB each for files up to 80 GB).
    max_streams: int = 64
    #: Seconds a transfer token lives (edges ask for a new one in time).
    token_ttl: int = 900
    #: Longest pause inside a PATCH body before the connection is closed.
    body_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.listen is not None and not self.public_url.startswith(("http://", "https://")):
            raise ValueError("receiver.public_url: expected the http(s):// URL edges reach the receiver at "
                             f"(ending in /transfers/), got {self.public_url!r}")
        if not 1 <= self.max_streams <= 4096:
            raise ValueError(f"receiver.max_streams: expected 1 to 4096, got {self.max_streams}")
        if not 30 <= self.token_ttl <= 86400:
            raise ValueError(f"receiver.token_ttl: expected 30 to 86400 seconds, got {self.token_ttl}")


@dataclass(frozen=True)
class RegistrySection:
    """
    The C{[registry]} table: where the cloud's database lives (the
    registry, its event log, and the link's inbox and outbox, which must
    share the registry's transactions).
    """

    #: Empty: SQLite, C{cloud.db} in C{cloud.data_dir}.  A
    #: C{postgresql://user@host/db} URL: that PostgreSQL database.
    dsn: str = ""

    def __post_init__(self) -> None:
        if self.dsn and not self.dsn.startswith(("postgresql://", "postgres://")):
            scheme = self.dsn.split(":", 1)[0]
            raise ValueError(
                f"registry.dsn: expected empty (SQLite in cloud.data_dir) or a postgresql:// URL, "
                f"got a value starting with {scheme!r}"
            )


@dataclass(frozen=True)
class JobsSection:
    """
    The C{[jobs]} table: this process's part in running jobs, and the job
    kinds (C{[jobs.kinds.NAME]}, see L{relay.cloud.jobs.kinds.JobKind}).
    """

    #: C{worker}: run jobs; C{dispatch}: only queue them (and give lost
    #: workers' jobs another attempt); C{both}, the single-process default.
    role: Literal["dispatch", "worker", "both"] = "both"
    #: Jobs this worker runs at once.
    slots: int = 2
    #: Seconds a worker's claim on a job lives without renewal (renewed
    #: every second); a dead worker's job runs again after about this long.
    lease: float = 15.0
    #: Seconds between SIGTERM and SIGKILL when a run is stopped.
    grace: float = 5.0
    #: Where runs get their private directories; relative to the working
    #: directory.
    work_dir: Path = Path("var/cloud/work")
    #: This worker's name in the leases (empty: host name and process id).
    worker_name: str = ""
    #: Run the jobs' commands as this user (with its groups), not as the
    #: worker's: the worker must then run as root.  Empty: as the worker.
    run_user: str = ""
    kinds: dict[str, JobKind] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.slots <= 256:
            raise ValueError(f"jobs.slots: expected 1 to 256, got {self.slots}")
        if not 3 <= self.lease <= 3600:
            raise ValueError(f"jobs.lease: expected 3 to 3600 seconds, got {self.lease}")
        if self.run_user and self.role != "dispatch":
            try:
                pwd.getpwnam(self.run_user)
            except KeyError:
                raise ValueError(f"jobs.run_user: there is no user {self.run_user!r} on this machine") from None
            if os.geteuid() != 0:
                raise ValueError(
                    f"jobs.run_user: running jobs as {self.run_user!r} needs relay-cloud to run as root "
                    f"(it runs as uid {os.geteuid()}); leave run_user out to run them as relay-cloud's own user"
                )
        check_kind_names(self.kinds)


@dataclass(frozen=True)
class CloudConfig:
    """
    Everything C{relay-cloud} is configured with.
    """

    cloud: CloudSection = field(default_factory=CloudSection)
    s3: S3Section = field(default_factory=S3Section)
    receiver: ReceiverSection = field(default_factory=ReceiverSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    link: LinkConfig = field(default_factory=LinkConfig)
    jobs: JobsSection = field(default_factory=JobsSection)
    log: LogConfig = field(default_factory=LogConfig)


def database_target(config: CloudConfig, base: Path) -> Path | str:
    """
    The cloud's database: the PostgreSQL DSN if one is configured, else the
    SQLite file in the data directory (relative to C{base}).
    """
    if config.registry.dsn:
        return config.registry.dsn
    data_dir = config.cloud.data_dir
    return (data_dir if data_dir.is_absolute() else base / data_dir) / "cloud.db"
