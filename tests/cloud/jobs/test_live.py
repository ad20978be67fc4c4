"""
A run's live log: batches at most every 250 ms, each with the offset of
its first byte, to every active edge, only while the run holds its lease.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from relay.cloud import registry as registry_schema
from relay.cloud import sync
from relay.cloud.jobs.leases import SCHEMA as JOBS_SCHEMA
from relay.cloud.jobs.leases import JobLeases
from relay.cloud.jobs.live import LiveLog
from relay.cloud.jobs.output import RunLog, cut_marker
from relay.cloud.registry import Registry
from relay.job_messages import JOB_LOG, MAX_LOG_BYTES
from relay.testing.db import SynchronousDatabase


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str, bytes | None]] = []
        self.woken = 0

    def put(self, conn: Any, type: str, body: dict[str, Any], *, to: str, payload: bytes | None = None,
            **_: Any) -> None:
        self.sent.append((type, body, to, payload))

    def wake(self) -> None:
        self.woken += 1


class LiveLogWorld(SynchronousTestCase):
    """
    A claimed job, three edges (one silent for a week), a run's live log.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_764_000_000)
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = SynchronousDatabase(path, [registry_schema.SCHEMA, sync.SCHEMA, JOBS_SCHEMA])
        registry = Registry(sync.EventLog(self.clock), self.clock)
        self.outbox = Outbox()
        self.leases = JobLeases(registry, self.outbox, lease=10.0)
        run = self.db.run_now
        user = run(registry.add_user, "alice", "x")
        self.project = run(registry.create_project, user["id"], "P")
        self.job_id = run(registry.submit_job, self.project, user["id"], "k", {}, [])
        run(self.leases.dispatch, self.job_id, 2)
        self.claim = run(self.leases.claim, self.job_id, "w1", self.clock.seconds())
        now = self.clock.seconds()
        for edge, seen in (("e1", now), ("e2", now - 60), ("gone", now - 8 * 86400)):
            run(lambda c, e=edge, s=seen: c.execute(
                "INSERT INTO sync_edges (edge, sent_upto, first_seen, last_seen) VALUES (?, 0, ?, ?)", (e, s, s)))
        self.outbox.sent.clear()
        self.progress = (-1.0, None)
        self.live = LiveLog(self.clock, self.db, self.outbox, self.leases, self.claim, lambda: self.progress)  # type: ignore[arg-type]

    def batches(self, edge: str = "e1") -> list[tuple[int, int, bool, Any]]:
        return [
            (body["offset"], body["size"], body["eof"], body["progress"])
            for type, body, to, _ in self.outbox.sent
            if type == JOB_LOG and to == f"relay.to-edge.{edge}"
        ]


class LiveLogTests(LiveLogWorld):
    def test_batched_at_most_every_interval(self) -> None:
        self.live.write(0, b"one\n")
        self.live.write(4, b"two\n")
        self.clock.advance(0)
        self.assertEqual(self.batches(), [(0, 8, False, None)], "the first line goes at once, with its neighbour")
        self.clock.advance(0.1)
        self.live.write(8, b"three\n")
        self.clock.advance(0.1)
        self.assertEqual(len(self.batches()), 1, "not twice within 250 ms")
        self.live.write(14, b"four\n")
        self.clock.advance(0.06)
        self.assertEqual(self.batches()[1:], [(8, 11, False, None)])
        payloads = b"".join(p or b"" for _, _, to, p in self.outbox.sent if to.endswith("e1"))
        self.assertEqual(payloads, b"one\ntwo\nthree\nfour\n")
        self.assertEqual(self.batches("e2"), self.batches(), "every edge heard from lately")
        self.assertEqual(self.batches("gone"), [], "not an edge silent for a week")
        self.assertEqual(self.outbox.sent[0][1]["project_id"], self.project)
        self.assertEqual(self.outbox.sent[0][1]["attempt"], 1)

    def test_large_batches_are_split(self) -> None:
        data = bytes(range(256)) * 1000  # 256,000 bytes
        self.live.write(0, data)
        self.clock.advance(0)
        batches = self.batches()
        self.assertEqual([b[0] for b in batches], list(range(0, len(data), MAX_LOG_BYTES)))
        self.assertEqual(sum(b[1] for b in batches), len(data))
        self.assertEqual(b"".join(p or b"" for _, _, to, p in self.outbox.sent if to.endswith("e1")), data)

    def test_progress_and_eof(self) -> None:
        self.live.write(0, b"::progress 0.5 half\n")
        self.progress = (0.5, "half")
        self.clock.advance(0)
        [(_, body, _, _)] = [m for m in self.outbox.sent if m[2].endswith("e1")]
        self.assertEqual((body["progress"], body["status"]), (0.5, "half"))
        self.clock.advance(1)
        self.live.soon()
        self.clock.advance(1)
        self.assertEqual(len(self.batches()), 1, "nothing new: nothing sent")
        self.progress = (0.75, None)
        self.live.soon()
        self.clock.advance(0)
        self.assertEqual(self.batches()[-1], (20, 0, False, 0.75), "progress alone")
        self.live.write(20, b"done\n")
        self.successResultOf(self.live.close_soon())
        self.assertEqual(self.batches()[-1], (20, 5, True, None))
        self.live.write(25, b"after\n")
        self.clock.advance(5)
        self.assertEqual(self.batches()[-1], (20, 5, True, None), "nothing after the end")

    def test_a_lost_lease_publishes_nothing(self) -> None:
        self.live.write(0, b"mine\n")
        self.clock.advance(0)
        # The lease expires and another worker takes the job.
        self.clock.advance(11)
        self.db.run_now(self.leases.reap, self.clock.seconds())
        self.assertIsNotNone(self.db.run_now(self.leases.claim, self.job_id, "w2", self.clock.seconds()))
        self.outbox.sent.clear()
        self.live.write(5, b"stale\n")
        self.clock.advance(1)
        self.successResultOf(self.live.close_soon())
        self.assertEqual(self.outbox.sent, [])


class RunLogTests(SynchronousTestCase):
    """
    What the log stores is what goes live: the same bytes, the cut marker
    included, with their offsets in the stored file.
    """

    def test_stored_bytes_and_offsets(self) -> None:
        path = Path(self.mktemp())
        stored: list[tuple[int, bytes]] = []
        log = RunLog(path, 10, on_stored=lambda offset, data: stored.append((offset, data)))
        log.write(0, b"12345")
        log.write(5, b"67890abc")
        log.write(13, b"more and more\n::progress 0.5 half way\n")
        log.close()
        whole = path.read_bytes()
        self.assertEqual(whole, b"1234567890" + cut_marker(10))
        self.assertEqual(stored, [(0, b"12345"), (5, b"67890" + cut_marker(10))])
        self.assertEqual((log.size, log.kept, log.stored), (51, 10, len(whole)))
        self.assertEqual((log.progress, log.status), (0.5, "half way"), "progress past the cut still counts")
        self.assertIn("1234567890", log.tail(), "the tail can be read once the log is closed")


def test_live_log_on_postgresql(postgresql_dsn: str) -> None:
    """
    The same transactions on the registry relay runs its workers on: the
    lease checked, the active edges read, a stale worker silent.
    """
    from relay.testing.db import SynchronousDatabase

    clock = Clock()
    clock.advance(1_764_000_000)
    from relay.cloud.jobs.live import SCHEMA as REQUESTS_SCHEMA
    from relay.cloud.jobs.live import LogRequests
    from relay.link.envelope import Envelope

    db = SynchronousDatabase(postgresql_dsn, [registry_schema.SCHEMA, sync.SCHEMA, JOBS_SCHEMA, REQUESTS_SCHEMA])
    try:
        registry = Registry(sync.EventLog(clock), clock)
        outbox = Outbox()
        leases = JobLeases(registry, outbox, lease=10.0)  # type: ignore[arg-type]
        user = db.run_now(registry.add_user, "alice", "x")
        project = db.run_now(registry.create_project, user["id"], "P")
        job_id = db.run_now(registry.submit_job, project, user["id"], "k", {}, [])
        db.run_now(leases.dispatch, job_id, 2)
        claim = db.run_now(leases.claim, job_id, "w1", clock.seconds())
        db.run_now(lambda c: c.execute(
            "INSERT INTO sync_edges (edge, sent_upto, first_seen, last_seen) VALUES ('e1', 0, ?, ?)",
            (clock.seconds(), clock.seconds())))
        outbox.sent.clear()
        live = LiveLog(clock, db, outbox, leases, claim, lambda: (-1.0, None),  # type: ignore[arg-type]
                       lambda start, end: b"hello\n"[start:end])
        live.write(0, b"hello\n")
        clock.advance(0)
        assert [(t, b["offset"], to, p) for t, b, to, p in outbox.sent] == [
            (JOB_LOG, 0, "relay.to-edge.e1", b"hello\n")
        ]
        for after in (0, 2):  # asked twice: the latest request counts
            body = {"edge": "e1", "job_id": job_id, "attempt": 1, "after": after, "upto": 6}
            db.run_now(LogRequests(clock).on_range, Envelope(type="job.log.range", source="edge:e1", time=0.0,
                                                             body=body))
        d = Deferred.fromCoroutine(live.serve())
        assert d.called and d.result == 1
        assert (outbox.sent[-1][1]["offset"], outbox.sent[-1][3]) == (2, b"llo\n")
        outbox.sent.clear()
        clock.advance(11)
        db.run_now(leases.reap, clock.seconds())
        assert db.run_now(leases.claim, job_id, "w2", clock.seconds()) is not None
        live.write(6, b"stale\n")
        clock.advance(1)
        assert [m[0] for m in outbox.sent] == ["job.run"], "the stale worker put nothing"
    finally:
        db.close()


class RangeTests(LiveLogWorld):
    """
    An edge's request for a range: recorded by whichever process gets it,
    served by the worker running the job, to that edge only.
    """

    def test_a_range_sent_again(self) -> None:
        from relay.cloud.jobs.live import SCHEMA as REQUESTS_SCHEMA
        from relay.cloud.jobs.live import LogRequests
        from relay.db import migrate
        from relay.link.envelope import Envelope

        migrate(self.db.conn, REQUESTS_SCHEMA)
        log = b"".join(f"line {n}\n".encode() for n in range(100))
        self.live = LiveLog(self.clock, self.db, self.outbox, self.leases, self.claim, lambda: (-1.0, None),  # type: ignore[arg-type]
                            lambda start, end: log[start:end])
        self.live.write(0, log[:500])
        self.clock.advance(0)
        self.live.write(500, log[500:])  # not sent yet
        requests = LogRequests(self.clock)

        def ask(edge: str, attempt: int, after: int, upto: int) -> None:
            body = {"edge": edge, "job_id": self.job_id, "attempt": attempt, "after": after, "upto": upto}
            self.db.run_now(requests.on_range, Envelope(type="job.log.range", source="edge:x", time=0.0, body=body))

        ask("e2", 1, 100, 900)
        ask("e1", 2, 0, 50)  # another attempt's: not this run's to answer
        self.outbox.sent.clear()
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(self.live.serve())), 1)
        [(type, body, to, payload)] = self.outbox.sent
        self.assertEqual((type, to, body["offset"], payload), (JOB_LOG, "relay.to-edge.e2", 100, log[100:500]))
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(self.live.serve())), 0, "served once")
        left = self.db.run_now(lambda c: c.execute("SELECT edge, attempt FROM job_log_requests").fetchall())
        self.assertEqual([tuple(r) for r in left], [("e1", 2)])
