"""
The edge's job routes beside L{relay.edge.web.api}'s (which submit and
cancel): the jobs listed and shown in full, and the log tail.

  - C{GET /api/v1/jobs[?project=ID]}: the caller's jobs (or one
    project's) with their state, progress, attempts, timestamps, kind,
    parameters, inputs and results;
  - C{GET /api/v1/jobs/<id>} (and C{/api/jobs/<id>}): one job, with the
    range of its log the edge holds;
  - C{GET /api/v1/jobs/<id>/log?offset=N} (and C{/api/jobs/<id>/log}):
    the log bytes the edge holds from C{N}, as plain text; the headers
    C{X-Log-Start} and C{X-Log-End} give the range held, C{X-Log-Offset}
    where the body starts (past C{N} when C{N} is before the range: the
    tail keeps the last C{[jobs] log_tail} bytes), C{X-Log-Attempt} its
    attempt and C{X-Log-Complete} whether the log is whole.  C{N} past the
    end held is answered 416.

Everything is read from the replica and the tails, never over the link.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from relay.db import Database
from relay.edge.auth import Principal
from relay.edge.identity import Identity
from relay.edge.jobs.tail import LogTails
from relay.edge.replica.pending import jobs_for, projects_for
from relay.edge.web.guard import answer, authenticated
from relay.edge.web.routes import api_route
from relay.permissions import Access

_HEX = frozenset("0123456789abcdef")


def _is_id(text: str) -> bool:
    return len(text) == 32 and set(text) <= _HEX


class JobRoutes:
    """
    The read routes of jobs.
    """

    def __init__(self, identity: Identity, db: Database, tails: LogTails) -> None:
        self._identity = identity
        self._db = db
        self._tails = tails

    def routes(self, app: Klein) -> None:
        authed = authenticated(self._identity)

        @api_route(app, "/jobs", ["GET"], legacy=False)
        @authed
        async def list_jobs(request: IRequest, principal: Principal) -> bytes:
            given = request.args.get(b"project")  # type: ignore[attr-defined]
            project_id = None if not given else given[0].decode("utf-8", "replace")
            jobs = await self._db.read(self._list, principal.user_id, project_id)
            if jobs is None:
                return answer(request, 404, {"error": "no such project"})
            return answer(request, 200, {"jobs": jobs})

        @api_route(app, "/jobs/<job_id>", ["GET"])
        @authed
        async def show_job(request: IRequest, principal: Principal, job_id: str) -> bytes:
            job = await self._db.read(self._show, principal.user_id, job_id) if _is_id(job_id) else None
            if job is None:
                return answer(request, 404, {"error": "no such job"})
            return answer(request, 200, {"job": job})

        @api_route(app, "/jobs/<job_id>/log", ["GET"])
        @authed
        async def job_log(request: IRequest, principal: Principal, job_id: str) -> bytes:
            given = request.args.get(b"offset", [b"0"])  # type: ignore[attr-defined]
            try:
                offset = int(given[0])
                if offset < 0 or not given[0].isdigit():
                    raise ValueError
            except ValueError:
                return answer(request, 400, {"error": "offset: expected a byte offset (0 or more)"})
            found = await self._db.read(self._log, principal.user_id, job_id) if _is_id(job_id) else None
            if found is None:
                return answer(request, 404, {"error": "no such job"})
            held = await self._db.read(lambda conn: self._tails.read(conn, job_id, offset))
            start, end, attempt, complete, data = 0, 0, 0, False, b""
            if held is not None:
                (tail, data) = held
                start, end, attempt, complete = tail.start, tail.end, tail.attempt, tail.eof
            if offset > end:
                request.setHeader(b"content-range", f"bytes */{end}".encode())
                return answer(request, 416, {
                    "error": f"offset {offset} is past the end of the log held ({end})", "start": start,
                    "end": end,
                })
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"x-content-type-options", b"nosniff")
            request.setHeader(b"x-log-start", str(start).encode())
            request.setHeader(b"x-log-end", str(end).encode())
            request.setHeader(b"x-log-offset", str(max(start, offset)).encode())
            request.setHeader(b"x-log-attempt", str(attempt).encode())
            request.setHeader(b"x-log-complete", b"1" if complete else b"0")
            return data

    # -- reads (on the database thread) ------------------------------------------

    def _visible(self, conn: Any, user_id: str, job_id: str) -> dict[str, Any] | None:
        """
        The job as L{jobs_for} shows it to the user, or C{None}.
        """
        row = conn.execute("SELECT project_id FROM replica_jobs WHERE id = ?", (job_id,)).fetchone()
        projects = [row[0]] if row is not None else [p["id"] for p in projects_for(conn, user_id)]
        for project_id in projects:
            for job in jobs_for(conn, user_id, project_id):
                if job["id"] == job_id:
                    return {**job, "project_id": project_id}
        return None

    def _log(self, conn: Any, user_id: str, job_id: str) -> bool | None:
        if self._visible(conn, user_id, job_id) is not None:
            return True
        # Batches may come before the job's row: their project says who sees them.
        held = self._tails.held(conn, job_id)
        if held is not None and Access("replica_").role(conn, held.project_id, user_id) is not None:
            return True
        return None

    def _show(self, conn: Any, user_id: str, job_id: str) -> dict[str, Any] | None:
        job = self._visible(conn, user_id, job_id)
        return None if job is None else self._detail(conn, job)

    def _list(self, conn: Any, user_id: str, project_id: str | None) -> list[dict[str, Any]] | None:
        if project_id is not None:
            if not _is_id(project_id) or not any(p["id"] == project_id for p in projects_for(conn, user_id)):
                return None
            projects = [project_id]
        else:
            projects = [p["id"] for p in projects_for(conn, user_id)]
        return [
            self._detail(conn, {**job, "project_id": p}) for p in projects for job in jobs_for(conn, user_id, p)
        ]

    def _detail(self, conn: Any, job: dict[str, Any]) -> dict[str, Any]:
        row = conn.execute(
            "SELECT parameters, inputs, result_files, attempts, started_at, finished_at, error "
            "FROM replica_jobs WHERE id = ?",
            (job["id"],),
        ).fetchone()
        detail = {
            **job, "parameters": {}, "inputs": [], "results": [], "attempts": 0, "started_at": None,
            "finished_at": None, "error": None,
        }
        if row is not None:
            results = json.loads(row["result_files"])
            files = {
                r["id"]: dict(r)
                for r in conn.execute(
                    f"SELECT id, name, size, sha256, state FROM replica_files WHERE id IN ({', '.join('?' * len(results))})",
                    results,
                )
            } if results else {}
            detail.update(
                parameters=json.loads(row["parameters"]), inputs=json.loads(row["inputs"]),
                results=[files.get(i, {"id": i, "name": None, "size": None, "sha256": None, "state": None})
                         for i in results],
                attempts=row["attempts"], started_at=row["started_at"], finished_at=row["finished_at"],
                error=row["error"],
            )
        held = self._tails.held(conn, job["id"])
        detail["log"] = None if held is None else {
            "attempt": held.attempt, "start": held.start, "end": held.end, "complete": held.eof,
        }
        return detail
