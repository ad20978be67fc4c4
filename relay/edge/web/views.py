"""
What the API's routes read (on the database thread): the replica's rows
with the caller's own commands in flight (L{relay.edge.replica.pending}),
shaped as C{docs/api.md} shows them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relay.edge.downloads.service import cache_states
from relay.edge.replica.pending import files_for, jobs_for, members_for, project_for, projects_for

_ID_LENGTH = 32


def is_id(text: str) -> bool:
    """Whether C{text} can be an id (32 lower-case hex digits)."""
    return len(text) == _ID_LENGTH and all(c in "0123456789abcdef" for c in text)



def projects_with_members(conn: Any, user_id: str) -> list[dict[str, Any]]:
    files = _counts(conn, "replica_files")
    jobs = _counts(conn, "replica_jobs")
    return [
        {**project, "members": members_for(conn, user_id, project["id"]),
         "file_count": files.get(project["id"], 0), "job_count": jobs.get(project["id"], 0)}
        for project in projects_for(conn, user_id)
    ]


def _counts(conn: Any, table: str) -> dict[str, int]:
    """Rows of C{table} per project (as the replica has them)."""
    return {row[0]: int(row[1]) for row in conn.execute(f"SELECT project_id, count(*) FROM {table} GROUP BY project_id")}


def project_detail(conn: Any, user_id: str, project_id: str) -> dict[str, Any] | None:
    project = project_for(conn, user_id, project_id)
    if project is None:
        return None
    return {
        **project,
        "members": members_for(conn, user_id, project_id),
        "files": files_for(conn, user_id, project_id),
        "jobs": jobs_for(conn, user_id, project_id),
    }


def listing(
    conn: Any, user_id: str, project_id: str | None, view: Callable[[Any, str, str], list[dict[str, Any]]]
) -> list[dict[str, Any]] | None:
    if project_id is not None:
        if not is_id(project_id) or project_for(conn, user_id, project_id) is None:
            return None
        projects = [project_id]
    else:
        projects = [p["id"] for p in projects_for(conn, user_id)]
    return [{**row, "project_id": p} for p in projects for row in view(conn, user_id, p)]


def user_id(conn: Any, name: str) -> str | None:
    row = conn.execute("SELECT id FROM replica_users WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def one(rows: list[dict[str, Any]], id: str, key: str = "id") -> dict[str, Any] | None:
    return next((row for row in rows if row[key] == id), None)


def member(conn: Any, user_id: str, project_id: str, member_id: str) -> dict[str, Any] | None:
    return one(members_for(conn, user_id, project_id), member_id, "user_id")


def job(conn: Any, user_id: str, job_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT project_id FROM replica_jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else one(jobs_for(conn, user_id, row[0]), job_id)


def files_with_cache(conn: Any, user_id: str, project_id: str) -> list[dict[str, Any]]:
    return cache_states(conn, files_for(conn, user_id, project_id))


def file(conn: Any, user_id: str, file_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT project_id FROM replica_files WHERE id = ?", (file_id,)).fetchone()
    return None if row is None else one(files_for(conn, user_id, row[0]), file_id)
