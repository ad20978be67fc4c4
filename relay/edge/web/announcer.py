"""
What the replica's changes mean to the people watching: the applier's
observer that turns applied events into live events on the L{EventHub}.

  - C{command.applied} / C{command.rejected} go to the user whose command
    it was, with the command's type and the ids it named (and, when
    rejected, the cloud's C{reason} and C{code}).
  - C{job.state} (the job's id, project, kind, state, progress, attempts,
    times, error and result files) goes to the project's members when a
    job appears or its state or attempt changes.
  - C{replica.changed} with the names of the tables that changed goes to
    each user the change concerns (the members of the project a row belongs
    to, the user a user or key row is about); a snapshot concerns everyone.

Events are hints: a browser refetches what C{replica.changed} names, and
the API's answers (read from the replica) are the truth.  Observations are
collected on the database thread while a sync message is applied and
published on the reactor thread once its handler finished without error:
a message whose handler fails announces nothing.  That is before the
transaction commits, so a group the inbox applies again one message at a
time (L{relay.link.inbox.Inbox._apply_group}) may announce twice, and a
commit that then fails may have announced changes that are not there.
Both only cost a refetch; and a refetch cannot see the data before the
commit, because every read goes through the database's one thread, behind
it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer

from relay.edge.events import EVERYONE, EventHub
from relay.edge.replica.applier import IReplicaObserver
from relay.replication import (
    API_KEYS,
    BY_KIND,
    COMMAND_APPLIED,
    COMMAND_REJECTED,
    FILES,
    JOB_KINDS,
    JOBS,
    MEMBERS,
    PROJECTS,
    TABLES,
    USERS,
    Table,
)

REPLICA_CHANGED = "replica.changed"
JOB_STATE = "job.state"
#: What C{job.state} tells of the job's row.
JOB_STATE_FIELDS = (
    "id", "project_id", "kind", "state", "progress", "attempts", "started_at", "finished_at", "error",
    "result_files",
)

#: The fields of a command body worth telling its user (never the rest:
#: a password command carries a hash).
SUBJECTS = ("project_id", "job_id", "file_id", "user_id", "name")

Announcement = tuple[str, str, dict[str, Any]]


@implementer(IReplicaObserver)
class ReplicaAnnouncer:
    """
    Publishes what the replica applied into C{hub}.

    @param reactor: publishing is handed to its thread.
    """

    def __init__(self, hub: EventHub, reactor: IReactorFromThreads) -> None:
        self._hub = hub
        self._reactor = reactor
        self._start()

    def _start(self) -> None:
        self._tables: dict[str, set[str]] = defaultdict(set)
        self._everyone = False
        self._answers: list[Announcement] = []
        self._jobs: list[Announcement] = []

    # -- IReplicaObserver (database thread) -------------------------------------

    def starting(self) -> None:
        self._start()

    def applying(self, conn: Any, kind: str, data: dict[str, Any]) -> None:
        if kind in (COMMAND_APPLIED, COMMAND_REJECTED):
            self._answer(conn, kind, data)
            return
        prefix, op = kind.rsplit(".", 1)
        table = BY_KIND[prefix]
        concerned = _concerned(conn, table, op, data)
        for user_id in concerned:
            self._tables[user_id].add(table.name)
        if table is JOBS and op == "put":
            self._job_state(conn, data, concerned)

    def replacing(self, conn: Any) -> None:
        self._everyone = True

    def settled(self) -> None:
        announcements: list[Announcement] = []
        if self._everyone:
            announcements.append((EVERYONE, REPLICA_CHANGED, {"tables": [t.name for t in TABLES]}))
        else:
            announcements.extend(
                (user_id, REPLICA_CHANGED, {"tables": sorted(tables)})
                for user_id, tables in sorted(self._tables.items())
            )
        announcements.extend(self._jobs)
        # After the changes: a browser told a command was applied finds its
        # effect already in the replica.
        announcements.extend(self._answers)
        self._start()
        if announcements:
            self._reactor.callFromThread(self._publish, announcements)

    # -- helpers ---------------------------------------------------------------

    def _answer(self, conn: Any, kind: str, data: dict[str, Any]) -> None:
        row = conn.execute(
            "SELECT user_id, type, body FROM pending_commands WHERE command_id = ? AND state = 'pending'",
            (data["command_id"],),
        ).fetchone()
        if row is None:
            return  # another edge's command, or answered before
        body = json.loads(row["body"])
        told: dict[str, Any] = {"command_id": data["command_id"], "type": row["type"]}
        told.update((name, body[name]) for name in SUBJECTS if name in body)
        if kind == COMMAND_REJECTED:
            told.update(reason=data["reason"], code=data["code"])
        self._answers.append((row["user_id"], kind, told))

    def _job_state(self, conn: Any, data: dict[str, Any], concerned: set[str]) -> None:
        """
        C{job.state} when a job is new or its state or attempt changes.
        """
        row = conn.execute("SELECT state, attempts FROM replica_jobs WHERE id = ?", (data["id"],)).fetchone()
        if row is not None and (row[0], row[1]) == (data["state"], data["attempts"]):
            return
        told = {name: data[name] for name in JOB_STATE_FIELDS}
        told["job_id"] = told.pop("id")
        self._jobs.extend((user_id, JOB_STATE, told) for user_id in sorted(concerned))

    def _publish(self, announcements: list[Announcement]) -> None:
        for owner, kind, data in announcements:
            self._hub.publish(owner, kind, data)


def _concerned(conn: Any, table: Table, op: str, data: dict[str, Any]) -> set[str]:
    """
    Who sees the row an event changes (read before it is applied, so a
    deleted row's project is still known).
    """
    if table is USERS:
        return {data["id"]}
    if table is API_KEYS:
        if "user_id" in data:
            return {data["user_id"]}
        row = conn.execute("SELECT user_id FROM replica_api_keys WHERE id = ?", (data["id"],)).fetchone()
        return set() if row is None else {row[0]}
    if table is PROJECTS:
        return _members(conn, data["id"])
    if table is MEMBERS:
        return _members(conn, data["project_id"]) | {data["user_id"]}
    if table in (FILES, JOBS):
        # The project it is in now and (a put may move it) the one it was in.
        row = conn.execute(f"SELECT project_id FROM replica_{table.name} WHERE id = ?", (data["id"],)).fetchone()
        projects = {p for p in (data.get("project_id"), None if row is None else row[0]) if p}
        return set().union(*(_members(conn, p) for p in projects))
    if table is JOB_KINDS:
        return {EVERYONE}  # the catalogue of kinds: everyone's job form
    return set()


def _members(conn: Any, project_id: str) -> set[str]:
    return {row[0] for row in conn.execute("SELECT user_id FROM replica_members WHERE project_id = ?", (project_id,))}
