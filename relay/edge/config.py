"""
The edge side's configuration, as read from C{etc/edge.toml}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

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

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", self.id):
            raise ValueError(
                f"edge.id: expected lower-case letters, digits and '-' (at most 63), got {self.id!r}"
            )


@dataclass(frozen=True)
class EdgeConfig:
    """
    Everything C{relay-edge} is configured with.
    """

    edge: EdgeSection = field(default_factory=EdgeSection)
    link: LinkConfig = field(default_factory=LinkConfig)
    log: LogConfig = field(default_factory=LogConfig)
