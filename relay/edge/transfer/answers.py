"""
The cloud's answers about transfers, applied on the database thread inside
the inbox's transaction: journal changes commit with the message's
dedupe record (an answer is applied exactly once, also across a crash),
and the run concerned is woken after the transaction.  URLs and
C{transfer.parts} pages go straight to the run's memory.
"""

from __future__ import annotations

from typing import Any

from relay.edge.transfer import journal
from relay.edge.transfer.context import AnswerContext
from relay.edge.transfer.journal import JobState
from relay.link.envelope import Envelope
from relay.replication import IInbox
from relay.transfer_messages import ABORTED, AUTHORIZED, FAILED, PARTS, REGISTERED, STARTED, URLS


class CloudAnswers:
    """The transfer service's inbox handlers."""

    def __init__(self, stage: AnswerContext) -> None:
        self._stage = stage

    def register(self, inbox: IInbox) -> None:
        inbox.register(STARTED, self._on_started)
        inbox.register(URLS, self._on_urls)
        inbox.register(PARTS, self._on_parts)
        inbox.register(FAILED, self._on_failed)
        inbox.register(REGISTERED, self._on_registered)
        inbox.register(ABORTED, lambda conn, message: None)
        inbox.register(AUTHORIZED, self._on_authorized)

    def _on_started(self, conn: Any, message: Envelope) -> None:
        job = journal.job_by_transfer(conn, message.body["transfer_id"])
        if job is not None and job.state is JobState.BEGINNING:
            journal.set_state(conn, job.upload_id, JobState.SENDING, self._stage.clock.seconds())
            self._stage.after_commit(self._stage.wake, job.upload_id)

    def _on_urls(self, conn: Any, message: Envelope) -> None:
        body = message.body
        urls = {u["number"]: u["url"] for u in body["urls"]}
        self._stage.after_commit(self._urls_arrived, body["transfer_id"], urls, body["expires_in"])

    def _urls_arrived(self, transfer_id: str, urls: dict[int, str], expires_in: int) -> None:
        run = self._stage.run_for_transfer(transfer_id)
        if run is not None:
            run.urls(transfer_id, urls, expires_in)

    def _on_authorized(self, conn: Any, message: Envelope) -> None:
        # The token lives in memory only: a restarted edge asks again.
        body = message.body
        self._stage.after_commit(self._token_arrived, body["transfer_id"], body["token"], body["url"],
                              body["expires_in"])

    def _token_arrived(self, transfer_id: str, token: str, url: str, expires_in: int) -> None:
        run = self._stage.run_for_transfer(transfer_id)
        if run is not None:
            run.authorized(transfer_id, token, url, expires_in)

    def _on_parts(self, conn: Any, message: Envelope) -> None:
        body = message.body
        self._stage.after_commit(self._page_arrived, body["transfer_id"], body["request_id"], body["page"],
                              body["last"], body["parts"])

    def _page_arrived(self, transfer_id: str, request_id: str, page: int, last: bool, parts: list[Any]) -> None:
        run = self._stage.run_for_transfer(transfer_id)
        if run is not None:
            run.page(transfer_id, request_id, page, last, parts)

    def _on_failed(self, conn: Any, message: Envelope) -> None:
        body = message.body
        job = journal.job_by_transfer(conn, body["transfer_id"])
        if job is None or job.state in (JobState.REGISTERED, JobState.DONE, JobState.FAILED):
            return
        now = self._stage.clock.seconds()
        code, reason = body["code"], body["reason"]
        if code == "no_receiver":
            self._stage.after_commit(self._direct, job.upload_id)
            return
        if code == "incomplete":
            journal.unconfirm(conn, job.upload_id, job.transfer_id, body.get("missing", []), now)
            journal.set_state(conn, job.upload_id, JobState.SENDING, now)
        elif code == "refused":
            journal.set_state(conn, job.upload_id, JobState.FAILED, now, error=f"refused: {reason}")
        else:
            self._stage.start_over_in(conn, job.upload_id, job.transfer_id, f"{code}: {reason}")
        self._stage.after_commit(self._stage.wake, job.upload_id, True)

    def _direct(self, upload_id: str) -> None:
        run = self._stage.run_of(upload_id)
        if run is not None:
            run.send_directly()

    def _on_registered(self, conn: Any, message: Envelope) -> None:
        # A failed transfer too: the edge may have given up on an answer
        # that was on its way, and the cloud's word that it has the file
        # is the last one.
        job = journal.job_by_transfer(conn, message.body["transfer_id"])
        live = (JobState.BEGINNING, JobState.SENDING, JobState.FINISHING, JobState.FAILED)
        if job is not None and job.state in live:
            journal.set_state(conn, job.upload_id, JobState.REGISTERED, self._stage.clock.seconds())
            self._stage.after_commit(self._stage.wake, job.upload_id, True)
