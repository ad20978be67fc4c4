"""
The cloud's half of the download path: presigned GET URLs for the edges,
and the S3 objects of deleted files removed.

C{download.request} is looked up in the registry inside the inbox's
transaction: a file the registry does not hold, or holds but not in S3, is
refused in that same transaction (C{download.failed}).  Signing the URL and
reading the object's content type are S3 client calls, which do not belong
in the transaction: they run after it, and their answer is put in the
outbox then.  Nothing about a request is kept: if the cloud stops before
answering, the edge asks again (C{docs/downloads.md}).

A deleted file's object is doomed in the deleting command's transaction
(C{doomed_objects}), and L{ObjectReaper} deletes it from S3 afterwards,
retrying until S3 agrees; so a crash between the two loses nothing.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from relay.cloud.commands import ICommandEffects
from relay.cloud.objects import IObjectStore, ObjectStoreError
from relay.cloud.transfers import edge_of
from relay.db import Database, Schema
from relay.download_messages import FAILED, REQUEST, URL, register_types
from relay.link.envelope import Envelope, to_edge
from relay.link.outbox import IOutbox

SCHEMA = Schema(
    "downloads",
    [
        """
        CREATE TABLE doomed_objects (
            object_key TEXT PRIMARY KEY,
            doomed_at DOUBLE PRECISION NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0
        );
        """,
    ],
)

#: At most this many doomed objects are deleted per round.
REAP_BATCH = 100


class CloudDownloads:
    """
    Answers the edges' C{download.request}s (see the module docstring).

    @param url_expiry: seconds a presigned GET URL lives.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        db: Database,
        outbox: IOutbox,
        objects: IObjectStore,
        *,
        url_expiry: int = 3600,
    ) -> None:
        self._reactor = reactor
        self._db = db
        self._outbox = outbox
        self._objects = objects
        self._expiry = url_expiry
        self.answered = 0

    def register(self, inbox: Any) -> None:
        inbox.register(REQUEST, self._requested)

    # -- the inbox side (database thread, inside the inbox's transaction) ------

    def _requested(self, conn: Any, message: Envelope) -> None:
        edge = edge_of(message)
        if edge is None:
            self.log.warn(
                "download request {id} from {source}, not an edge: ignored",
                id=message.id,
                source=message.source,
            )
            return
        body = message.body
        file = conn.execute(
            "SELECT size, sha256, object_key, state FROM files WHERE id = ?", (body["file_id"],)
        ).fetchone()
        if file is None:
            self._refuse(conn, edge, body, "not_found", "no such file")
        elif file["state"] != "stored" or not file["object_key"] or not file["sha256"]:
            self._refuse(
                conn, edge, body, "not_stored", "the file is not in the cloud's storage yet"
            )
        else:
            # After this transaction: the database thread is serial.
            self._reactor.callFromThread(
                self._sign,
                edge,
                body["request_id"],
                body["file_id"],
                file["object_key"],
                int(file["size"]),
                file["sha256"],
            )

    def _refuse(self, conn: Any, edge: str, body: dict[str, Any], code: str, reason: str) -> None:
        self._outbox.put(
            conn,
            FAILED,
            {
                "request_id": body["request_id"],
                "file_id": body["file_id"],
                "code": code,
                "reason": reason,
            },
            to=to_edge(edge),
        )
        self._reactor.callFromThread(self._outbox.wake)

    # -- after the transaction (reactor thread) --------------------------------

    def _sign(
        self, edge: str, request_id: str, file_id: str, key: str, size: int, sha256: str
    ) -> None:
        Deferred.fromCoroutine(self._answer(edge, request_id, file_id, key, size, sha256))

    async def _answer(
        self, edge: str, request_id: str, file_id: str, key: str, size: int, sha256: str
    ) -> None:
        ids: dict[str, Any] = {"request_id": request_id, "file_id": file_id}
        try:
            info = await self._objects.head(key)
            url = await self._objects.presign_get(key, self._expiry)
        except ObjectStoreError as e:
            self.log.warn("no download URL for file {file_id}: {error}", file_id=file_id, error=e)
            type, body = (
                FAILED,
                {**ids, "code": "unavailable", "reason": f"the storage did not answer: {e}"[:2000]},
            )
        else:
            if info is None or info.size != size:
                type, body = (
                    FAILED,
                    {**ids, "code": "not_stored", "reason": "the file's object is missing"},
                )
            else:
                type, body = (
                    URL,
                    {
                        **ids,
                        "url": url,
                        "expires_in": self._expiry,
                        "size": size,
                        "sha256": sha256,
                        "content_type": info.content_type[:255],
                    },
                )
        try:
            await self._db.run(lambda conn: self._outbox.put(conn, type, body, to=to_edge(edge)))
        except Exception:
            self.log.failure(
                "could not answer download request {request_id}", request_id=request_id
            )
            return
        self._outbox.wake()
        self.answered += 1


@implementer(ICommandEffects)
class ObjectReaper(TimerService):
    """
    Deletes the S3 objects of deleted files (the command effect
    C{file_deleted} dooms them inside the command's transaction).
    """

    log = Logger()

    def __init__(
        self, reactor: Any, db: Database, objects: IObjectStore, interval: float = 30.0
    ) -> None:
        super().__init__(interval, self.reap)
        self.clock = reactor
        self._reactor = reactor
        self._db = db
        self._objects = objects
        self._reaping: Deferred[None] | None = None
        self.deleted = 0

    # -- ICommandEffects (database thread, in the command's transaction) -------

    def job_queued(self, conn: Any, job: Any) -> None:
        pass

    def job_cancelled(self, conn: Any, job: Any) -> None:
        pass

    def file_deleted(self, conn: Any, file: Any) -> None:
        if file["object_key"]:
            conn.execute(
                "INSERT INTO doomed_objects (object_key, doomed_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (file["object_key"], self._reactor.seconds()),
            )
            self._reactor.callFromThread(self.reap)

    # -- the reaper ------------------------------------------------------------

    def reap(self) -> Deferred[None]:
        """Delete what is doomed (one round at a time)."""
        if self._reaping is None:
            self._reaping = Deferred.fromCoroutine(self._reap())
            self._reaping.addBoth(self._reaped)
        return self._reaping

    def _reaped(self, result: Any) -> Any:
        self._reaping = None
        return result

    async def _reap(self) -> None:
        try:
            keys = await self._db.run(_doomed, REAP_BATCH)
        except Exception:
            self.log.failure("could not read the doomed objects")
            return
        for key in keys:
            try:
                await self._objects.delete(key)
            except ObjectStoreError as e:
                self.log.warn(
                    "could not delete object {key} (will try again): {error}", key=key, error=e
                )
                await self._db.run(_attempted, key)
                continue
            await self._db.run(_forget, key)
            self.deleted += 1


def _doomed(conn: Any, limit: int) -> list[str]:
    rows = conn.execute(
        "SELECT object_key FROM doomed_objects ORDER BY attempts, doomed_at LIMIT ?", (limit,)
    )
    return [row[0] for row in rows]


def _attempted(conn: Any, key: str) -> None:
    conn.execute("UPDATE doomed_objects SET attempts = attempts + 1 WHERE object_key = ?", (key,))


def _forget(conn: Any, key: str) -> None:
    conn.execute("DELETE FROM doomed_objects WHERE object_key = ?", (key,))


class Downloads(MultiService):
    """The cloud's download component: the URL answers and the object reaper."""

    def __init__(self, answers: CloudDownloads, reaper: ObjectReaper) -> None:
        super().__init__()
        self.answers = answers
        self.effects = reaper
        reaper.setServiceParent(self)


def build_downloads(
    s3: Any, reactor: Any, db: Database, bridge: Any, objects: IObjectStore
) -> Downloads:
    """
    The cloud's download component from the C{[s3]} table: its message
    types in the bridge's catalogue, its handler on the bridge's inbox.
    Its C{effects} go to L{relay.cloud.commands.CloudCommands}.
    """
    register_types(bridge.catalogue)
    answers = CloudDownloads(reactor, db, bridge.outbox, objects, url_expiry=s3.presign_expiry)
    answers.register(bridge.inbox)
    return Downloads(answers, ObjectReaper(reactor, db, objects))
