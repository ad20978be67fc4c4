"""
Logging for ops.

relay logs through C{twisted.logger} with named fields.  twistd writes text
by default; for one JSON object per line (for a log shipper), set
C{[log] format = "json"} (L{LogFormat} installs the observer, for the
twistd plugins and the C{.tac} files alike), or start twistd with
C{--logger relay.logs.json}.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
)


def json(out: IO[str] | None = None, level: LogLevel = LogLevel.info) -> ILogObserver:
    """
    An observer writing one JSON object per line to C{out} (default: standard
    output), for events at C{level} and above.  Its name is what
    C{twistd --logger relay.logs.json} calls.
    """
    return FilteringLogObserver(
        jsonFileLogObserver(out or sys.stdout, recordSeparator=""),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )


class LogFormat(MultiService):
    """
    A process's service tree, which installs the observer of its
    C{[log] format} on the Application it is put in.  twistd takes its
    observer from there when it starts logging, after the plugin's
    C{makeService} (unless C{--logger} names one): C{"json"} writes one
    JSON object per line to standard output, C{"text"} leaves twistd's own.
    """

    def __init__(self, format: str, tree: IService) -> None:
        super().__init__()
        self.format = format
        tree.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if self.format == "json":
            parent.setComponent(ILogObserver, json())
        super().setServiceParent(parent)
