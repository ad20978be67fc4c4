"""
How a transfer's course reaches its owner, and what happens when it fails
for good: the live events (states, coalesced progress), a spool copy found
damaged while parts stream from it (failed at once, the multipart upload
aborted, no retry loop), and the owner's retry of a failed transfer, which
starts over cleanly and erases the spool copy only once the new transfer
is registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import RequestGenerationFailed

from relay.edge.events import Event
from relay.edge.transfer import journal
from relay.edge.transfer.run import DAMAGED
from relay.edge.uploads.store import UploadState

from .test_service import SIZE, Edge, MiB

UPLOAD = "u" * 32


class OutcomeTests(SynchronousTestCase):
    def edge(self, **settings: Any) -> Edge:
        root = Path(self.mktemp())
        root.mkdir()
        return Edge(root, **settings)

    def listen(self, edge: Edge, user: str = "alice") -> list[Event]:
        heard: list[Event] = []
        edge.hub.subscribe(user, heard.append)
        return heard

    def begin(self, edge: Edge) -> str:
        edge.service.startService()
        edge.service.upload_staged(edge.stage())
        edge.turn()
        sent = edge.sent()
        self.assertEqual([t for t, _ in sent], ["transfer.begin", "transfer.presign"])
        tid = str(sent[0][1]["transfer_id"])
        edge.reply("transfer.started", {"transfer_id": tid, "object_key": "k"})
        return tid

    def register(self, edge: Edge, tid: str) -> None:
        edge.reply("file.registered", {"transfer_id": tid, "file_id": UPLOAD, "project": "p1",
                                       "object_key": "k", "size": SIZE, "sha256": "0" * 64, "etag": "e"})

    def upload(self, edge: Edge) -> Any:
        return self.successResultOf(edge.store.get(UPLOAD))

    # -- live events ---------------------------------------------------------------

    def test_states_and_coalesced_progress(self) -> None:
        """
        The owner (and nobody else) hears each state, and progress at most
        every 0.25 s: the first report at once, the latest of those held
        back when the window closes, and whatever is still held back before
        the next state.
        """
        edge = self.edge(concurrency=4)
        heard, bob = self.listen(edge), self.listen(edge, "bob")
        tid = self.begin(edge)
        self.assertEqual([(e.kind, e.data) for e in heard],
                         [("upload.state", {"upload_id": UPLOAD, "state": "transferring"})])
        edge.urls(tid, [1, 2, 3, 4])
        requests = edge.target.pending()
        self.assertEqual(len(requests), 4)
        for request in requests[:3]:  # three parts confirmed within one instant
            request.answer.callback(_ok(request))
            edge.turn()
        progress = [e.data for e in heard if e.kind == "transfer.progress"]
        self.assertEqual(progress, [{"upload_id": UPLOAD, "confirmed": MiB, "total": SIZE,
                                     "parts_done": 1, "parts_total": 4}])
        edge.turn(0.25)
        progress = [e.data for e in heard if e.kind == "transfer.progress"]
        self.assertEqual(progress[1:], [{"upload_id": UPLOAD, "confirmed": 3 * MiB, "total": SIZE,
                                         "parts_done": 3, "parts_total": 4}])
        edge.turn(0.1)
        requests[3].answer.callback(_ok(requests[3]))
        edge.turn()
        # Sending the held report opened a new window (until 0.5 s).
        self.assertEqual(len([e for e in heard if e.kind == "transfer.progress"]), 2, "held back")
        edge.turn(0.15)
        self.assertEqual(len([e for e in heard if e.kind == "transfer.progress"]), 3)
        self.register(edge, tid)
        self.assertEqual([(e.kind, e.data.get("state") or e.data.get("parts_done")) for e in heard],
                         [("upload.state", "transferring"), ("transfer.progress", 1), ("transfer.progress", 3),
                          ("transfer.progress", 4), ("upload.state", "in_cloud")])
        self.assertEqual(bob, [])

    def test_held_progress_goes_out_before_the_state(self) -> None:
        edge = self.edge(concurrency=4)
        heard = self.listen(edge)
        tid = self.begin(edge)
        edge.urls(tid, [1, 2, 3, 4])
        edge.answer_puts()  # all four within one instant: 1 reported, 4 held back
        self.register(edge, tid)
        kinds = [(e.kind, e.data.get("state") or e.data.get("parts_done")) for e in heard]
        self.assertEqual(kinds, [("upload.state", "transferring"), ("transfer.progress", 1),
                                 ("transfer.progress", 4), ("upload.state", "in_cloud")])
        edge.turn(1)
        self.assertEqual(len(heard), 4, "nothing left to send after the state")

    # -- a damaged spool copy ------------------------------------------------------------

    def test_damaged_copy_fails_for_good(self) -> None:
        """
        A spool segment that fails authentication while its part streams:
        the upload fails with a reason for people, the multipart upload is
        aborted, the parts in flight stop, and nothing is tried again,
        however long one waits.  The spool file is kept.
        """
        edge = self.edge()
        heard = self.listen(edge)
        tid = self.begin(edge)
        edge.urls(tid, [1, 2, 3, 4])
        first = edge.target.pending()
        self.assertEqual(len(first), 2, "parts 1 and 2 read before the damage")
        corrupt(edge, 2 * MiB + MiB // 2)  # inside part 3
        for request in first:
            request.answer.callback(_ok(request))
            edge.turn()
        # Part 3's body fails to read; the HTTP client reports it as a failed request.
        unreadable = [r for r in edge.target.pending() if isinstance(getattr(r.produced, "result", None), Failure)]
        self.assertEqual([r.url.split("partNumber=")[1][0] for r in unreadable], ["3"])
        failure = self.failureResultOf(unreadable[0].produced)  # type: ignore[arg-type]
        unreadable[0].answer.errback(RequestGenerationFailed([failure]))
        edge.turn()
        self.assertEqual(edge.job().state, journal.JobState.FAILED)
        self.assertEqual(edge.job().error, DAMAGED)
        self.assertEqual(edge.sent(), [("transfer.abort", {"transfer_id": tid})])
        upload = self.upload(edge)
        self.assertEqual((upload.state, upload.error), (UploadState.FAILED, DAMAGED))
        self.assertEqual(heard[-1].data, {"upload_id": UPLOAD, "state": "failed", "reason": DAMAGED})
        self.assertEqual(edge.target.pending(), [], "the other part stopped")
        puts = len(edge.target.requests)
        edge.turn(3600)
        edge.turn(3600)
        self.assertEqual(len(edge.target.requests), puts, "no retry loop")
        self.assertEqual(edge.sent(), [])
        self.assertTrue(edge.spool.exists(UPLOAD), "kept whatever fails")

    def test_damage_found_while_measuring(self) -> None:
        edge = self.edge()
        edge.service.startService()
        staged = edge.stage()
        corrupt(edge, MiB)
        edge.service.upload_staged(staged)
        edge.turn()
        self.assertEqual(edge.sent(), [])
        self.assertEqual(self.upload(edge).error, DAMAGED)

    # -- retry ---------------------------------------------------------------------

    def test_retry_starts_over_and_erases_only_after_the_new_registration(self) -> None:
        edge = self.edge()
        heard = self.listen(edge)
        old = self.begin(edge)
        edge.urls(old, [1, 2, 3, 4])
        edge.answer_puts()
        self.assertEqual([t for t, _ in edge.sent()], ["transfer.finish"])
        edge.reply("transfer.failed", {"transfer_id": old, "code": "refused", "reason": "not a member"})
        self.assertEqual(self.upload(edge).state, UploadState.FAILED)
        self.assertFalse(self.successResultOf(edge.service.retry_transfer("v" * 32)), "no such transfer")

        self.assertTrue(self.successResultOf(edge.service.retry_transfer(UPLOAD)))
        edge.turn()
        upload = self.upload(edge)
        self.assertEqual((upload.state, upload.error, upload.transferred), (UploadState.TRANSFERRING, "", 0))
        sent = edge.sent()
        self.assertEqual([t for t, _ in sent], ["transfer.abort", "transfer.begin", "transfer.presign"])
        self.assertEqual(sent[0][1], {"transfer_id": old})
        new = sent[1][1]["transfer_id"]
        self.assertNotEqual(new, old)
        job = edge.job()
        self.assertEqual((job.state, job.restarts, job.confirmed_bytes), (journal.JobState.BEGINNING, 0, 0))
        self.assertFalse(self.successResultOf(edge.service.retry_transfer(UPLOAD)), "not failed now")
        # The old transfer's answers change nothing, registration included.
        self.register(edge, old)
        self.assertTrue(edge.spool.exists(UPLOAD))
        self.assertEqual(edge.job().state, journal.JobState.BEGINNING)

        edge.reply("transfer.started", {"transfer_id": new, "object_key": "k"})
        edge.urls(new, [1, 2, 3, 4])
        self.assertEqual(sorted(edge.answer_puts()), [1, 2, 3, 4], "every part again")
        self.assertEqual(edge.sent(), [("transfer.finish", {"transfer_id": new})])
        edge.turn(3600)
        self.assertTrue(edge.spool.exists(UPLOAD), "kept until registered")
        self.register(edge, new)
        self.assertFalse(edge.spool.exists(UPLOAD))
        self.assertEqual(self.upload(edge).state, UploadState.IN_CLOUD)
        states = [e.data["state"] for e in heard if e.kind == "upload.state"]
        self.assertEqual(states, ["transferring", "failed", "transferring", "in_cloud"])
        self.assertEqual([e.data.get("reason") for e in heard if e.kind == "upload.state"][1],
                         "refused: not a member")

    def test_retry_after_a_restart_of_the_edge(self) -> None:
        """A failed transfer is not resumed at start, but can be retried."""
        edge = self.edge()
        tid = self.begin(edge)
        edge.reply("transfer.failed", {"transfer_id": tid, "code": "refused", "reason": "r"})
        edge.service.stopService()
        edge.turn()
        again = Edge(edge.root, edge.db, edge.spool)
        again.service.startService()
        again.turn(60)
        self.assertEqual(again.sent(), [])
        self.assertTrue(self.successResultOf(again.service.retry_transfer(UPLOAD)))
        again.turn()
        self.assertEqual([t for t, _ in again.sent()], ["transfer.abort", "transfer.begin", "transfer.presign"])


def _ok(request: Any) -> Any:
    import hashlib

    from relay.edge.transfer.uploader import PartResponse

    return PartResponse(200, hashlib.md5(bytes(request.received.data)).hexdigest())


def corrupt(edge: Edge, offset: int) -> None:
    """Flip a byte of the spool's data file about C{offset} bytes in."""
    path = edge.spool.directory / f"{UPLOAD}.data"
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x55]))
