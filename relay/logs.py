"""
Logging for ops.

relay logs through C{twisted.logger} with named fields.  twistd writes text
by default; for one JSON object per line (for a log shipper), start twistd
with C{--logger relay.logs.json}, or set C{[log] format = "json"} when
running from a C{.tac} file, which installs the same observer.
"""

from __future__ import annotations

import sys
from typing import IO

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
