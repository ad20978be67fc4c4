"""
The edge side's configuration, as read from C{etc/edge.toml}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from relay.config import LinkConfig, LogConfig, ServerEndpoint


@dataclass(frozen=True)
class EdgeSection:
    """
    The C{[edge]} table.
    """

    #: This edge's name: its queue is C{relay.to-edge.<id>}.
    id: str = "local"
    #: Where the web UI, the API and the tus receiver listen.
    listen: ServerEndpoint = "tcp:8080:interface=127.0.0.1"
    #: Where the edge keeps its state (database, spool); relative paths are
    #: relative to the working directory.
    data_dir: Path = Path("var/edge")
    #: The browser front end's files (templates, static files and the npm
    #: packages of web/package.json); relative to the working directory.
    web_dir: Path = Path("web")

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", self.id):
            raise ValueError(
                f"edge.id: expected lower-case letters, digits and '-' (at most 63), got {self.id!r}"
            )


@dataclass(frozen=True)
class UploadsSection:
    """
    The C{[uploads]} table: the tus receiver's limits and its spool.
    Sizes are in bytes, times in seconds.
    """

    #: The largest upload accepted (C{Tus-Max-Size}; larger ones get 413).
    max_size: int = 64 << 30
    #: Bytes one user's uploads may hold at this edge until they reach the
    #: cloud (413 beyond it); 0 for no cap.
    user_quota: int = 100 << 30
    #: Free disk the spool always leaves (507 when an upload would eat it).
    disk_reserve: int = 1 << 30
    #: An unfinished upload is erased this long after its last write.
    expiry: int = 24 * 3600
    #: How often expired uploads are looked for.
    housekeeping_interval: int = 300
    #: A connection has this long in all for each request's line and
    #: headers (a deadline, not an idle timer), and may stay idle this long
    #: between requests.
    header_timeout: int = 30
    #: A request body may pause this long between bytes.
    body_timeout: int = 60
    #: A newer request takes over an upload whose writer has been silent
    #: this long; a busy writer keeps it, and the newcomer gets 423 after
    #: waiting lock_wait.
    lock_stale_after: float = 2.0
    lock_wait: float = 5.0
    #: Unfinished uploads one user may have at once (429 beyond).
    max_unfinished: int = 100
    #: Origins whose scripts may upload (CORS), e.g. "https://app.example.com".
    cors_origins: tuple[str, ...] = ()
    #: The encrypted spool (default: <data_dir>/spool) and the master key
    #: file, which must lie outside it (default: <data_dir>/spool.key).
    spool_dir: Path | None = None
    master_key: Path | None = None

    def __post_init__(self) -> None:
        positive = ("max_size", "housekeeping_interval", "header_timeout", "body_timeout", "expiry",
                    "max_unfinished")
        for name in positive:
            if getattr(self, name) <= 0:
                value = getattr(self, name)
                raise ValueError(f"uploads.{name}: expected a positive number, got {value}")
        for name in ("user_quota", "disk_reserve"):
            if getattr(self, name) < 0:
                value = getattr(self, name)
                raise ValueError(f"uploads.{name}: expected 0 or more, got {value}")
        if self.lock_stale_after <= 0 or self.lock_wait < 0:
            raise ValueError("uploads.lock_stale_after and lock_wait: expected positive seconds")


@dataclass(frozen=True)
class TransferSection:
    """
    The C{[transfer]} table: how staged uploads go to S3 (C{docs/transfer.md}).
    Sizes in bytes, times in seconds.
    """

    #: Part PUTs in flight at once, over all uploads.
    concurrency: int = 16
    #: Bytes per second all part PUTs may use together (0: no cap), to
    #: leave room for interactive traffic on a thin link.
    bandwidth_limit: int = 0
    #: An attempt during which no byte moved for this long is abandoned.
    stall_timeout: float = 45.0
    #: An attempt is abandoned after this long anyway.
    part_timeout: float = 1800.0
    #: Backoff between attempts of a part: first ceiling, largest.
    retry_initial: float = 1.0
    retry_cap: float = 30.0
    #: A request to the cloud unanswered this long is sent again.
    request_timeout: float = 120.0
    #: At a transfer's tail, idle slots PUT the slowest parts again, up to
    #: this many copies of a part at once (1: never); the first answer wins.
    tail_copies: int = 3
    #: C{"tus"}: to the cloud's tus receiver over parallel partial uploads
    #: (a reset costs a reconnect); C{"direct"}: presigned part PUTs
    #: straight to S3 (a reset costs the part; the cloud carries no data).
    mode: Literal["tus", "direct"] = "tus"
    #: Parallel streams per file on the tus path: the number follows what
    #: the link delivers, within these bounds.
    min_streams: int = 4
    max_streams: int = 64
    #: The first file's streams (clamped to the bounds); later files
    #: start at the count the one before settled at.
    start_streams: int = 64
    #: The receiver's address as this edge reaches it, up to C{/transfers/}
    #: (empty: the address the cloud hands out with each token).
    receiver_url: str = ""
    #: On the tus path, a PATCH during which no byte moved for this long is
    #: abandoned (it resumes from the receiver's offset).
    stream_stall_timeout: float = 15.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_streams <= self.max_streams <= 256:
            raise ValueError(f"transfer.min_streams, max_streams: expected 1 <= min <= max <= 256, "
                             f"got {self.min_streams} and {self.max_streams}")
        if not 1 <= self.start_streams <= 256:
            raise ValueError(f"transfer.start_streams: expected 1 to 256, got {self.start_streams}")
        if self.receiver_url and not self.receiver_url.startswith(("http://", "https://")):
            raise ValueError(f"transfer.receiver_url: expected empty or an http(s):// URL, got {self.receiver_url!r}")
        if self.stream_stall_timeout <= 0:
            raise ValueError("transfer.stream_stall_timeout: expected a positive number")
        if not 1 <= self.concurrency <= 256:
            raise ValueError(f"transfer.concurrency: expected 1 to 256, got {self.concurrency}")
        if self.bandwidth_limit < 0:
            raise ValueError(f"transfer.bandwidth_limit: expected 0 or more, got {self.bandwidth_limit}")
        for name in ("stall_timeout", "part_timeout", "retry_initial", "retry_cap", "request_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"transfer.{name}: expected a positive number, got {getattr(self, name)}")
        if not 1 <= self.tail_copies <= 8:
            raise ValueError(f"transfer.tail_copies: expected 1 to 8, got {self.tail_copies}")
        if self.retry_initial > self.retry_cap:
            raise ValueError("transfer.retry_initial: expected at most transfer.retry_cap")


@dataclass(frozen=True)
class DownloadsSection:
    """
    The C{[downloads]} table: the edge's file cache and how files are
    fetched into it (C{docs/downloads.md}).  Sizes in bytes, times in
    seconds.
    """

    #: Bytes the cache may hold (least recently used files are evicted).
    cache_size: int = 20 << 30
    #: The cache's directory (default: <data_dir>/cache); it must be on the
    #: spool's filesystem for uploads to join the cache without a copy.
    cache_dir: Path | None = None
    #: Files uploaded at other edges are fetched before anyone asks up to
    #: this size (job results whatever their size); 0: only results.
    prefetch_max_size: int = 64 << 20
    #: Parallel ranged GETs per file, and the bytes each asks for at a time.
    streams: int = 8
    chunk_size: int = 4 << 20
    #: A GET during which no byte arrived for this long is dropped and resumed.
    stall_timeout: float = 30.0
    #: The cloud's answer with a download URL is awaited this long (then 504).
    request_timeout: float = 20.0
    #: A fetch that got no byte for this long fails (what it has is kept).
    give_up_after: float = 300.0
    #: Bytes per second all fetches may use together (0: no cap), to leave
    #: room for interactive traffic on a thin link.
    bandwidth_limit: int = 0

    def __post_init__(self) -> None:
        if self.cache_size < 0 or self.prefetch_max_size < 0 or self.bandwidth_limit < 0:
            raise ValueError("downloads.cache_size, prefetch_max_size and bandwidth_limit: expected 0 or more")
        if not 1 <= self.streams <= 64:
            raise ValueError(f"downloads.streams: expected 1 to 64, got {self.streams}")
        if not 64 << 10 <= self.chunk_size <= 256 << 20:
            raise ValueError(f"downloads.chunk_size: expected 64 KiB to 256 MiB, got {self.chunk_size}")
        for name in ("stall_timeout", "request_timeout", "give_up_after"):
            if getattr(self, name) <= 0:
                raise ValueError(f"downloads.{name}: expected a positive number, got {getattr(self, name)}")


@dataclass(frozen=True)
class JobsSection:
    """
    The C{[jobs]} table: what the edge keeps of running jobs (C{docs/jobs.md}).
    """

    #: Bytes of each job's log the edge keeps (its tail), whatever the job
    #: prints; C{GET /api/v1/jobs/<id>/log} serves them.
    log_tail: int = 256 * 1024
    #: Seconds a batch of a log that arrived ahead of a missing one waits
    #: for it before the tail restarts at the later batch.
    gap_wait: float = 30.0

    def __post_init__(self) -> None:
        if not 4096 <= self.log_tail <= 64 << 20:
            raise ValueError(f"jobs.log_tail: expected 4096 to {64 << 20} bytes, got {self.log_tail}")
        if self.gap_wait <= 0:
            raise ValueError(f"jobs.gap_wait: expected positive seconds, got {self.gap_wait}")


@dataclass(frozen=True)
class WebSection:
    """
    The C{[web]} table: what the edge's HTTP listener allows any client
    before a route sees the request (C{docs/security.md}).  Sizes in bytes,
    times in seconds.
    """

    #: The largest request body outside C{/files/} (413 from Content-Length
    #: or as soon as a chunked body passes it; nothing reaches the disk).
    max_body: int = 64 * 1024
    #: Request line plus headers, and the number of headers (400 beyond).
    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    #: Bodies and responses must move at least min_rate bytes in every
    #: rate_window seconds, or the connection is dropped (relay's own
    #: pauses, while the disk catches up, do not count).
    min_rate: int = 1024
    rate_window: float = 30.0
    #: Open connections in all and from one address; more are closed at once.
    max_connections: int = 2048
    max_connections_per_address: int = 64
    #: Open C{/api/events} streams per user (429 beyond).
    max_streams_per_user: int = 8
    #: Logins: failures each account and each address may have before each
    #: further attempt waits, doubling from login_delay up to
    #: login_delay_cap; failures are forgotten after login_window.
    login_free_attempts: int = 3
    login_delay: float = 1.0
    login_delay_cap: float = 300.0
    login_window: float = 900.0
    #: Password checks (scrypt) run on this many threads at most, and at
    #: most login_queue logins wait for them (429 beyond).
    scrypt_threads: int = 2
    login_queue: int = 32
    #: The file descriptors the edge needs (RLIMIT_NOFILE); a lower soft
    #: limit is raised to it at start, or the start is refused.
    min_open_files: int = 4096

    def __post_init__(self) -> None:
        positive = (
            "max_body", "max_header_bytes", "max_headers", "min_rate", "rate_window", "max_connections",
            "max_connections_per_address", "max_streams_per_user", "login_free_attempts", "login_delay",
            "login_delay_cap", "login_window", "scrypt_threads", "login_queue", "min_open_files",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"web.{name}: expected a positive number, got {getattr(self, name)}")
        if self.min_open_files < self.max_connections + 64:
            raise ValueError("web.min_open_files: expected at least web.max_connections + 64")


@dataclass(frozen=True)
class EdgeConfig:
    """
    Everything C{relay-edge} is configured with.
    """

    edge: EdgeSection = field(default_factory=EdgeSection)
    uploads: UploadsSection = field(default_factory=UploadsSection)
    transfer: TransferSection = field(default_factory=TransferSection)
    downloads: DownloadsSection = field(default_factory=DownloadsSection)
    jobs: JobsSection = field(default_factory=JobsSection)
    web: WebSection = field(default_factory=WebSection)
    link: LinkConfig = field(default_factory=LinkConfig)
    log: LogConfig = field(default_factory=LogConfig)
