"""
The live messages of a running job, cloud -> edge (C{relay.to-edge.<id>}),
as JSON schemas for the link's catalogue.  C{docs/messages.md} ("Jobs")
describes them for people, C{docs/jobs.md} tells the whole story.

C{job.log}: one batch of a run's log (its binary payload: the bytes the
worker stored, from C{offset}), with the run's latest progress.  A worker
sends one at most every L{BATCH_INTERVAL} seconds per running job to each
edge, in order; each carries the byte offset of its first byte in the log
of attempt C{attempt}, so an edge keeps each byte once whatever it
receives twice, and notices a gap.  The last batch of a run says C{eof}.

C{job.log.range}: an edge that noticed a gap (a batch past what it holds)
asks for the missing bytes; the worker running the job sends them again
as C{job.log} batches, to that edge only.
"""

from __future__ import annotations

from typing import Any

from relay.link.catalogue import Catalogue

JOB_LOG = "job.log"
JOB_LOG_RANGE = "job.log.range"

#: Seconds between two batches of one run (at most one batch per interval).
BATCH_INTERVAL = 0.25
#: Bytes of log in one C{job.log} message; a larger batch is split.
MAX_LOG_BYTES = 64 * 1024

_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_EDGE = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}

JOB_LOG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job_id": _ID,
        "project_id": _ID,
        "attempt": {"type": "integer", "minimum": 1},
        "offset": {"type": "integer", "minimum": 0},
        "size": {"type": "integer", "minimum": 0, "maximum": MAX_LOG_BYTES},
        "eof": {"type": "boolean"},
        "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "status": {"type": ["string", "null"], "maxLength": 200},
    },
    "required": ["job_id", "project_id", "attempt", "offset", "size", "eof"],
    "additionalProperties": False,
}


JOB_LOG_RANGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "edge": _EDGE,
        "job_id": _ID,
        "attempt": {"type": "integer", "minimum": 1},
        "after": {"type": "integer", "minimum": 0},
        "upto": {"type": "integer", "minimum": 0},
    },
    "required": ["edge", "job_id", "attempt", "after", "upto"],
    "additionalProperties": False,
}


def register_types(catalogue: Catalogue) -> None:
    """
    Add the jobs' live message types to a catalogue (both sides).
    """
    catalogue.register(
        JOB_LOG, JOB_LOG_SCHEMA,
        description="cloud -> edge: a batch of a running job's log (the payload, from 'offset') and its progress",
    )
    catalogue.register(
        JOB_LOG_RANGE, JOB_LOG_RANGE_SCHEMA,
        description="edge -> cloud: send bytes 'after' to 'upto' of a running job's log again (a gap)",
    )
