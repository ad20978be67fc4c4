"""
The edge's replica of the cloud registry: applied from the cloud's events
(L{ReplicaApplier}), kept asking by L{SyncMonitor}, with the edge's own
commands overlaid as pending (L{CommandIssuer} and the views).
"""

from relay.edge.replica.applier import PREFIX, Position, ReplicaApplier, apply_event, position
from relay.edge.replica.monitor import SyncMonitor
from relay.edge.replica.pending import (
    CommandIssuer,
    dismiss,
    jobs_for,
    notices_for,
    projects_for,
)
from relay.edge.replica.schema import SCHEMA

__all__ = [
    "PREFIX",
    "SCHEMA",
    "CommandIssuer",
    "Position",
    "ReplicaApplier",
    "SyncMonitor",
    "apply_event",
    "dismiss",
    "jobs_for",
    "notices_for",
    "position",
    "projects_for",
]
