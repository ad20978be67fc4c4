"""
The edge's job routes: jobs shown in full under /api/v1/, the log tail
served from an offset, submit and cancel under /api/v1/ too, and job.state
told to the project's members as the replica changes.
"""

from __future__ import annotations

from typing import Any

from relay.edge.jobs.routes import JobRoutes
from relay.edge.jobs.tail import LogTails
from relay.link.catalogue import Catalogue
from relay.link.envelope import Envelope
from relay.testing.sync import FakeInbox
from tests.edge.web.world import BASE, ApiWorld

LOG = b"".join(f"line {n}\n".encode() for n in range(100))


class JobRouteTests(ApiWorld):
    def setUp(self) -> None:
        super().setUp()
        self.tails = LogTails(self.clock, limit=4096, gap_wait=30.0)
        JobRoutes(self.edge.identity, self.edge.db, self.tails).routes(self.app)
        self.resource = self.app.resource()
        registry = self.cloud.registry
        self.input = self.cloud.run(lambda c: registry.put_file(c, self.home, "in.v", 3, sha256="c" * 64))
        self.job = self.cloud.run(
            lambda c: registry.submit_job(c, self.home, self.alice["id"], "synth", {"top": "t"}, [self.input])
        )
        self.cloud.run(registry.start_job, self.job, 1)
        self.sync()
        self.edge.db.run_now(self.tails.receive, self.job, self.home, 1, 0, LOG[:300], False)

    def raw(self, path: str, user: str = "alice") -> tuple[int, bytes, Any]:
        from treq.testing import StubTreq

        cookie, _ = self.session(user)
        client = StubTreq(self.resource)
        d = client.get(BASE + path, headers={"Cookie": [f"relay_session={cookie}"]})
        client.flush()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(response.content()), response.headers

    def test_show(self) -> None:
        for path in (f"/api/v1/jobs/{self.job}", f"/api/jobs/{self.job}"):
            code, body = self.request("GET", path, user="bob")
            self.assertEqual(code, 200, body)
            job = body["job"]
            self.assertEqual(
                (job["state"], job["attempts"], job["kind"], job["parameters"], job["inputs"], job["project_id"]),
                ("running", 1, "synth", {"top": "t"}, [self.input], self.home),
            )
            self.assertIsNotNone(job["started_at"])
            self.assertEqual(job["log"], {"attempt": 1, "start": 0, "end": 300, "complete": False})
        for user, path in (("carol", f"/api/v1/jobs/{self.job}"), ("alice", "/api/v1/jobs/" + "0" * 32),
                           ("alice", "/api/v1/jobs/not-an-id")):
            code, body = self.request("GET", path, user=user)
            self.assertEqual((code, body), (404, {"error": "no such job", "code": "not_found"}))

    def test_results_and_list(self) -> None:
        registry = self.cloud.registry
        result = self.cloud.run(lambda c: registry.put_file(c, self.home, "synth-x.log", 9, sha256="d" * 64,
                                                            kind="result", job_id=self.job))
        self.cloud.run(lambda c: registry.finish_job(c, self.job, "timed_out", result_files=[result],
                                                     error="timed out after 2 s"))
        self.sync()
        code, body = self.request("GET", f"/api/v1/jobs?project={self.home}", user="alice")
        [job] = body["jobs"]
        self.assertEqual((job["state"], job["error"]), ("timed_out", "timed out after 2 s"))
        self.assertEqual([(r["id"], r["name"], r["size"]) for r in job["results"]], [(result, "synth-x.log", 9)])
        code, body = self.request("GET", f"/api/files?project={self.home}", user="alice")
        self.assertEqual({f["name"]: (f["kind"], f["job_id"]) for f in body["files"]},
                         {"in.v": ("upload", None), "synth-x.log": ("result", self.job)})
        self.assertEqual(self.request("GET", "/api/v1/jobs", user="carol")[1], {"jobs": []})
        self.assertEqual(self.request("GET", "/api/v1/jobs?project=" + "0" * 32, user="alice")[0], 404)
        # Told live: the members see the job time out, with its error.
        [state] = [e.data for e in self.seen["bob"] if e.kind == "job.state" and e.data["state"] == "timed_out"]
        self.assertEqual((state["job_id"], state["attempts"], state["result_files"]), (self.job, 1, [result]))
        self.assertEqual([e for e in self.seen["carol"] if e.kind == "job.state"], [])

    def test_log(self) -> None:
        code, body, headers = self.raw(f"/api/v1/jobs/{self.job}/log")
        self.assertEqual((code, body), (200, LOG[:300]))
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"])
        self.assertEqual(
            [headers.getRawHeaders(h)[0] for h in ("x-log-start", "x-log-end", "x-log-offset", "x-log-complete")],
            ["0", "300", "0", "0"],
        )
        code, body, headers = self.raw(f"/api/jobs/{self.job}/log?offset=250")
        self.assertEqual((code, body, headers.getRawHeaders("x-log-offset")), (200, LOG[250:300], ["250"]))
        code, body, _ = self.raw(f"/api/v1/jobs/{self.job}/log?offset=300")
        self.assertEqual((code, body), (200, b""), "at the end: nothing yet")
        code, body, headers = self.raw(f"/api/v1/jobs/{self.job}/log?offset=301")
        self.assertEqual(code, 416)
        self.assertIn(b"past the end of the log held (300)", body)
        self.assertEqual(headers.getRawHeaders("content-range"), ["bytes */300"])
        for bad in ("-1", "x", "1.5", ""):
            self.assertEqual(self.raw(f"/api/v1/jobs/{self.job}/log?offset={bad}")[0], 400, bad)
        self.assertEqual(self.raw(f"/api/v1/jobs/{self.job}/log", user="carol")[0], 404)
        self.assertEqual(self.raw(f"/api/v1/jobs/{self.job}/log", user="bob")[0], 200)
        # The rest, and the end: the range held moves on, bounded.
        for offset in range(300, len(LOG), 100):
            self.edge.db.run_now(self.tails.receive, self.job, self.home, 1, offset, LOG[offset : offset + 100], False)
        self.edge.db.run_now(self.tails.receive, self.job, self.home, 1, len(LOG), b"", True)
        code, body, headers = self.raw(f"/api/v1/jobs/{self.job}/log")
        self.assertEqual(body, LOG)
        self.assertEqual(headers.getRawHeaders("x-log-complete"), ["1"])

    def test_log_of_a_job_not_yet_in_the_replica(self) -> None:
        job = "e" * 32
        self.edge.db.run_now(self.tails.receive, job, self.home, 1, 0, b"early\n", False)
        self.assertEqual(self.raw(f"/api/v1/jobs/{job}/log")[:2], (200, b"early\n"))
        self.assertEqual(self.raw(f"/api/v1/jobs/{job}/log", user="carol")[0], 404)

    def test_submit_and_cancel_under_v1(self) -> None:
        code, body = self.request("POST", "/api/v1/jobs", {"project_id": self.home, "kind": "render"}, user="alice")
        self.assertEqual(code, 202, body)
        self.assertEqual(body["job"]["pending"], "submit")
        code, body = self.request("POST", f"/api/v1/jobs/{self.job}/cancel", user="alice")
        self.assertEqual(code, 202, body)
        self.assertEqual([m.type for m in self.sent()], ["job.submit", "job.cancel"])
        code, body = self.request("GET", f"/api/v1/jobs/{self.job}", user="alice")
        self.assertEqual(body["job"]["pending"], "cancel")


class JobLogMessageTests(ApiWorld):
    """
    C{job.log} through the edge's inbox: kept, told to the members.
    """

    def test_received_and_told(self) -> None:
        from relay.edge.jobs.live import JobLogReceiver
        from relay.job_messages import register_types
        from tests.edge.web.world import InlineThreads

        tails = LogTails(self.clock, limit=4096, gap_wait=30.0)
        types = Catalogue()
        register_types(types)
        inbox = FakeInbox(self.edge.db, types)
        JobLogReceiver(tails, self.hub, InlineThreads().callFromThread).register(inbox)
        job = "f" * 32

        def deliver(offset: int, data: bytes, **more: Any) -> None:
            body = {"job_id": job, "project_id": self.home, "attempt": 1, "offset": offset, "size": len(data),
                    "eof": False, **more}
            inbox.deliver(Envelope(type="job.log", source="cloud", time=0.0, body=body, payload=data or None))

        deliver(0, b"one\n")
        deliver(0, b"one\n")  # again
        deliver(8, b"three\n")  # ahead of a gap
        deliver(4, b"two\n", progress=0.5, status="half")
        told = [e.data for e in self.seen["bob"] if e.kind == "job.log"]
        self.assertEqual([(t["offset"], t["end"], t["text"]) for t in told],
                         [(0, 4, "one\n"), (4, 8, "two\n"), (8, 14, "three\n")])
        [progress] = [e.data for e in self.seen["alice"] if e.kind == "job.progress"]
        self.assertEqual((progress["progress"], progress["status"]), (0.5, "half"))
        self.assertEqual([e for e in self.seen["carol"] if e.kind.startswith("job.")], [])
        held = self.edge.db.run_now(tails.read, job, 0)
        self.assertEqual(held[1], b"one\ntwo\nthree\n")


class GapTests(ApiWorld):
    """
    A batch past a gap: the edge asks the cloud for the missing bytes, not
    again for a while, again while the gap stays open; filled, told once.
    """

    def test_asks_for_the_missing_range(self) -> None:
        from relay.edge.jobs.live import JobLogReceiver
        from relay.job_messages import register_types
        from tests.edge.web.world import InlineThreads

        tails = LogTails(self.clock, limit=4096, gap_wait=30.0)
        types = Catalogue()
        register_types(types)
        inbox = FakeInbox(self.edge.db, types)
        receiver = JobLogReceiver(tails, self.hub, InlineThreads().callFromThread, edge_id="e1",
                                  outbox=self.edge.outbox, ask_every=5.0)
        receiver.register(inbox)
        job = "f" * 32

        def deliver(offset: int, data: bytes) -> None:
            body = {"job_id": job, "project_id": self.home, "attempt": 1, "offset": offset, "size": len(data),
                    "eof": False}
            inbox.deliver(Envelope(type="job.log", source="cloud", time=0.0, body=body, payload=data))

        def asked() -> list[dict[str, Any]]:
            return [m.body for m in self.sent() if m.type == "job.log.range"]

        deliver(0, b"one\n")
        self.assertEqual(asked(), [])
        deliver(8, b"three\n")
        self.assertEqual(asked(), [{"edge": "e1", "job_id": job, "attempt": 1, "after": 4, "upto": 8}])
        deliver(14, b"four\n")
        self.clock.advance(4)
        self.assertFalse(self.edge.db.run_now(receiver.housekeeping, self.clock.seconds()))
        self.assertEqual(asked(), [], "not again within 5 s")
        self.clock.advance(1)
        self.assertTrue(self.edge.db.run_now(receiver.housekeeping, self.clock.seconds()))
        self.assertEqual([(a["after"], a["upto"]) for a in asked()], [(4, 8)], "again while the gap stays")
        deliver(4, b"two\n")  # the cloud's answer
        told = [(e.data["offset"], e.data["end"]) for e in self.seen["alice"] if e.kind == "job.log"]
        self.assertEqual(told, [(0, 4), (4, 8), (8, 14), (14, 19)])
        self.clock.advance(10)
        self.assertFalse(self.edge.db.run_now(receiver.housekeeping, self.clock.seconds()))
        self.assertEqual(asked(), [], "no gap: nothing asked")
