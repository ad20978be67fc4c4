"""
The catalogue of job kinds at the edge (the replica's C{job_kinds}, as the
cloud published it), and the edge's check of a job request against it:
the same checks the cloud makes (L{relay.jobkinds}), made before anything
is queued, so a bad request is refused at once with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from relay.jobkinds import BadRequest, CatalogueEntry, InputFile, check_inputs
from relay.replication import JOB_KINDS

_COLUMNS = ", ".join(JOB_KINDS.columns)

#: Why an upload made at this edge is not an input yet, by its state.
_NOT_YET = {
    "receiving": "it is still being uploaded",
    "staged": "it is still on its way to the cloud",
    "transferring": "it is still on its way to the cloud",
    "failed": "its transfer to the cloud failed",
}


def job_kinds(conn: Any) -> list[CatalogueEntry]:
    """
    Every kind of the catalogue, by name.
    """
    return [
        CatalogueEntry.from_wire(JOB_KINDS.to_wire(row))
        for row in conn.execute(f"SELECT {_COLUMNS} FROM replica_job_kinds ORDER BY name")
    ]


def job_kind(conn: Any, name: str) -> CatalogueEntry | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM replica_job_kinds WHERE name = ?", (name,)).fetchone()
    return None if row is None else CatalogueEntry.from_wire(JOB_KINDS.to_wire(row))


def check_job(conn: Any, project_id: str, kind: str, parameters: Mapping[str, Any], inputs: Sequence[str]) -> None:
    """
    Refuse a job request the cloud would refuse: an unknown kind,
    parameters the kind refuses, inputs that are not the project's stored
    files.  Call after the caller's permission to submit was checked.

    @raise BadRequest: with the reason and its code.
    """
    entry = job_kind(conn, kind)
    if entry is None:
        raise BadRequest(f"no job kind {kind!r}")
    entry.check(parameters, inputs)
    check_inputs(project_id, inputs, lambda file_id: _input(conn, file_id))


def _input(conn: Any, file_id: str) -> InputFile | None:
    row = conn.execute(
        "SELECT project_id, state, object_key FROM replica_files WHERE id = ?", (file_id,)
    ).fetchone()
    if row is not None:
        stored = row["state"] == "stored" and row["object_key"]
        return row["project_id"], None if stored else f"its state is {row['state']}"
    # Not in the replica yet: maybe an upload made here.  One the cloud
    # confirmed is in the registry already (it registers the file before it
    # confirms), even if sync has not brought the row here yet.
    upload = conn.execute("SELECT project, state FROM uploads WHERE id = ?", (file_id,)).fetchone()
    if upload is not None:
        if upload["state"] == "in_cloud":
            return upload["project"], None
        return upload["project"], _NOT_YET.get(upload["state"], f"its upload is {upload['state']}")
    return None
