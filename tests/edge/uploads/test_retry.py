"""
C{POST /api/uploads/<id>/retry} with the edge's real identity (sessions,
CSRF tokens, API keys from the replica): only the owner may start a failed
transfer over, a browser session only with its CSRF token, and only a
failed transfer.  (The transfer stage's side: tests/edge/transfer.)
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from relay.cloud import sync
from relay.edge.config import UploadsSection
from relay.edge.uploads.component import build_uploads
from relay.edge.uploads.handoff import IUploadSink, StagedUpload
from relay.edge.uploads.spool import Spool
from relay.edge.uploads.store import SCHEMA, Upload, UploadState, UploadStore
from relay.link.envelope import Envelope
from relay.metrics import Metrics
from relay.testing.auth import FakeProjectAccess
from relay.testing.db import SynchronousDatabase
from relay.testing.registry import CloudSide, EdgeSide

BASE = "http://edge.example"


@implementer(IUploadSink)
class RetryingSink:
    """Starts a failed transfer over as the transfer stage does (its record says so)."""

    def __init__(self, store: UploadStore) -> None:
        self.store = store
        self.retried: list[str] = []
        self.willing = True

    def upload_staged(self, upload: StagedUpload) -> Deferred[None]:
        return succeed(None)

    def retry_transfer(self, upload_id: str) -> Deferred[bool]:
        if not self.willing:
            return succeed(False)
        self.retried.append(upload_id)
        return self.store.set_state(upload_id, UploadState.TRANSFERRING, 0.0, error="").addCallback(lambda _: True)


class RetryRouteTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock = Clock()
        clock.advance(1_764_000_000)
        tmp = Path(self.mktemp())
        tmp.mkdir()
        cloud = CloudSide(tmp / "cloud.db", clock)
        self.edge = EdgeSide("e1", tmp / "edge.db", clock)
        self.addCleanup(cloud.close)
        self.addCleanup(self.edge.close)
        self.alice = cloud.add_user("alice", "alice's password")["id"]
        cloud.add_user("bob", "bob's password")
        self.key = cloud.run(cloud.registry.create_key, self.alice, "tool").token
        head = cloud.run(sync.sequence)
        self.edge.db.run_now(lambda c: c.execute("UPDATE replica_sync SET synced = 1"))
        self.edge.inbox.deliver(Envelope("sync.events", "cloud", 0.0,
                                         {"events": cloud.run(sync.events, 0, head), "head": head}))
        db = SynchronousDatabase(tmp / "uploads.db", [SCHEMA])
        self.store = UploadStore(db)
        self.sink = RetryingSink(self.store)
        uploads = build_uploads(
            UploadsSection(), tmp, clock, db, Metrics(), self.edge.identity, FakeProjectAccess(), self.sink,
            spool=Spool(tmp / "spool", bytes(32)),
        )
        uploads.service.ready = True  # not started: no recovery to wait for
        app = Klein()
        self.edge.identity.routes(app)
        uploads.add_routes(app)
        self.treq = StubTreq(app.resource())
        self.failed = self.add(UploadState.FAILED, error="S3 keeps refusing a part")
        self.staged = self.add(UploadState.STAGED)

    def add(self, state: UploadState, **fields: Any) -> str:
        upload_id = secrets.token_hex(16)
        self.store.add(Upload(id=upload_id, owner=self.alice, project="p", filename="a.bin", filetype="",
                              length=10, offset=10, state=state, **fields))
        return upload_id

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                body: Any = None) -> tuple[int, Any, Any]:
        all_headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        d = self.treq.request(method, BASE + path, data=data, headers={k: [v] for k, v in all_headers.items()})
        self.treq.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(response.content())
        is_json = response.headers.getRawHeaders("content-type") == ["application/json"]
        return response.code, json.loads(content) if is_json else content, response.headers

    def login(self, name: str) -> tuple[str, str]:
        code, body, headers = self.request("POST", "/api/login", body={"name": name, "password": f"{name}'s password"})
        self.assertEqual(code, 200, body)
        cookie = headers.getRawHeaders("set-cookie")[0].split(";")[0]
        return cookie, body["csrf_token"]

    def retry(self, upload_id: str, headers: dict[str, str]) -> tuple[int, Any]:
        code, body, _ = self.request("POST", f"/api/uploads/{upload_id}/retry", headers)
        return code, body

    def state(self, upload_id: str) -> UploadState:
        upload = self.successResultOf(self.store.get(upload_id))
        assert upload is not None
        return upload.state

    def test_sink(self) -> None:
        verifyObject(IUploadSink, self.sink)

    def test_owner_session_with_csrf_token(self) -> None:
        cookie, csrf = self.login("alice")
        self.assertEqual(self.retry(self.failed, {"Cookie": cookie})[0], 401, "no CSRF token")
        self.assertEqual(self.retry(self.failed, {"Cookie": cookie, "X-CSRF-Token": "forged"})[0], 401)
        self.assertEqual((self.sink.retried, self.state(self.failed)), ([], UploadState.FAILED))
        code, body = self.retry(self.failed, {"Cookie": cookie, "X-CSRF-Token": csrf})
        self.assertEqual(code, 202, body)
        self.assertEqual((body["id"], body["state"], body["error"]), (self.failed, "transferring", None))
        self.assertEqual(self.sink.retried, [self.failed])

    def test_api_key(self) -> None:
        code, body = self.retry(self.failed, {"Authorization": f"Bearer {self.key}"})
        self.assertEqual((code, body["state"]), (202, "transferring"))

    def test_someone_else_gets_404(self) -> None:
        cookie, csrf = self.login("bob")
        code, body = self.retry(self.failed, {"Cookie": cookie, "X-CSRF-Token": csrf})
        self.assertEqual(code, 404, body)
        self.assertEqual(self.retry(secrets.token_hex(16), {"Cookie": cookie, "X-CSRF-Token": csrf})[0], 404)
        self.assertEqual(self.retry("not-an-id", {"Cookie": cookie, "X-CSRF-Token": csrf})[0], 404)
        self.assertEqual((self.sink.retried, self.state(self.failed)), ([], UploadState.FAILED))

    def test_only_a_failed_transfer(self) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        code, body = self.retry(self.staged, auth)
        self.assertEqual(code, 409)
        self.assertIn("staged", body["error"])
        self.sink.willing = False  # failed, but the transfer stage is still failing it
        self.assertEqual(self.retry(self.failed, auth)[0], 409)
        self.assertEqual(self.sink.retried, [])

    def test_anonymous_and_wrong_methods(self) -> None:
        self.assertEqual(self.retry(self.failed, {})[0], 401)
        code, _, _ = self.request("GET", f"/api/uploads/{self.failed}/retry", {"Authorization": f"Bearer {self.key}"})
        self.assertEqual(code, 405)
        self.assertEqual(self.sink.retried, [])
