"""
Job requests at the edge: the catalogue of kinds the cloud published
(C{GET /api/v1/job-kinds}), and a request the cloud would refuse refused
here at once (C{POST /api/v1/jobs}), by the same checks, with nothing
queued.
"""

from __future__ import annotations

from typing import Any

from relay.cloud.jobs.catalogue import entries
from relay.cloud.jobs.kinds import BadRequest, JobKind
from tests.edge.web.world import ApiWorld

KINDS = {
    "synth": JobKind(
        command=("relay-job-synth", "--top={top}", "{inputs}"), description="FPGA synthesis.", min_inputs=1,
        parameters={"type": "object", "additionalProperties": False,
                    "properties": {"top": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}}},
    ),
    # A schema that lets any string through: relay's own checks stop what
    # would escape the work directory or pass for an option.
    "copy": JobKind(
        command=("cp", "{inputs}", "{target}"), description="Copies.", min_inputs=1, max_inputs=2,
        parameters={"type": "object", "required": ["target"], "properties": {"target": {"type": "string"}}},
    ),
}


class JobRequests(ApiWorld):
    def setUp(self) -> None:
        super().setUp()
        self.cloud.publish_kinds(*entries(KINDS))
        registry = self.cloud.registry
        self.design = self.cloud.run(lambda c: registry.put_file(
            c, self.home, "counter.v", 10, sha256="0" * 64, object_key=f"projects/{self.home}/files/x"
        ))
        carols = self.cloud.default_project(self.carol["id"])
        self.carols = self.cloud.run(lambda c: registry.put_file(
            c, carols, "secret.v", 10, sha256="0" * 64, object_key=f"projects/{carols}/files/y"
        ))
        self.sync()
        # An upload made at this edge, still on its way to the cloud.
        self.uploading = "ab" * 16
        self.edge.db.run_now(lambda c: c.execute(
            "INSERT INTO uploads (id, owner, project, filename, filetype, length, state, created, updated) "
            "VALUES (?, ?, ?, 'new.v', 'text/plain', 10, 'transferring', 0, 0)",
            (self.uploading, self.alice["id"], self.home),
        ))
        self.sent()
        self.seen["alice"].clear()

    def submit(self, kind: str, inputs: list[str], path: str = "/api/v1/jobs", **parameters: Any) -> tuple[int, Any]:
        return self.request("POST", path, {"project_id": self.home, "kind": kind, "parameters": parameters,
                                           "inputs": inputs}, user="alice")

    def test_the_catalogue_is_served_without_commands(self) -> None:
        code, body = self.request("GET", "/api/v1/job-kinds", user="bob")
        self.assertEqual(code, 200)
        self.assertEqual(self.request("GET", "/api/job-kinds", user="bob"), (code, body))
        self.assertEqual([k["name"] for k in body["kinds"]], ["copy", "synth"])
        synth = body["kinds"][1]
        self.assertEqual(synth, {
            "name": "synth", "description": "FPGA synthesis.", "parameters": KINDS["synth"].parameters,
            "min_inputs": 1, "max_inputs": 100, "timeout": 3600.0,
        })
        self.assertNotIn("relay-job-synth", repr(body))
        self.assertEqual(self.request("GET", "/api/v1/job-kinds")[0], 401)

    def test_refused_at_the_edge_with_the_reason_and_nothing_queued(self) -> None:
        design, carols, uploading = self.design, self.carols, self.uploading
        unknown = "cd" * 16
        cases: list[tuple[str, list[str], dict[str, Any], int, str]] = [
            ("render", [design], {}, 400, "no job kind 'render'"),
            ("synth", [design], {"top": 3}, 400, "parameter top: 3 is not of type 'string'"),
            ("synth", [design], {"top": "a b"}, 400, "parameter top: 'a b' does not match '^[A-Za-z_][A-Za-z0-9_]*$'"),
            ("synth", [design], {"other": 1}, 400,
             "parameters: Additional properties are not allowed ('other' was unexpected)"),
            ("synth", [], {}, 400, "this kind takes 1 to 100 input files, got 0"),
            ("copy", [design], {}, 400, "parameters: 'target' is a required property"),
            ("copy", [design], {"target": "../../etc/passwd"}, 400,
             "parameter target: may not be an absolute path or contain '..'"),
            ("copy", [design], {"target": "/etc/passwd"}, 400,
             "parameter target: may not be an absolute path or contain '..'"),
            ("copy", [design], {"target": "out/../../x"}, 400,
             "parameter target: may not be an absolute path or contain '..'"),
            ("copy", [design], {"target": "-rf"}, 400,
             "parameter target: may not start with '-' (it would pass for an option)"),
            ("copy", [design], {"target": "a\nb"}, 400, "parameter target: control characters are not allowed"),
            ("copy", [design, design, design], {"target": "x"}, 400, "this kind takes 1 to 2 input files, got 3"),
            ("synth", [carols], {}, 404, f"input file {carols} is not in this project"),
            ("synth", [unknown], {}, 404, f"input file {unknown} is not in this project"),
            ("synth", [uploading], {}, 400,
             f"input file {uploading} is not stored in the cloud yet: it is still on its way to the cloud"),
        ]
        for path in ("/api/v1/jobs", "/api/jobs"):
            for kind, inputs, parameters, status, reason in cases:
                code, body = self.submit(kind, inputs, path, **parameters)
                self.assertEqual((path, kind, parameters, code, body["error"]), (path, kind, parameters, status, reason))
                if kind in KINDS and status == 400 and inputs == [design]:
                    # The cloud's own check says the same.
                    with self.assertRaises(BadRequest) as refused:
                        KINDS[kind].check(parameters, inputs)
                    self.assertEqual(str(refused.exception), reason)
        self.assertEqual(self.stored(), (0, 0))
        self.assertEqual(self.seen["alice"], [])

    def test_a_viewer_is_refused_before_the_request_is_looked_at(self) -> None:
        code, body = self.request("POST", "/api/v1/jobs", {"project_id": self.home, "kind": "render"}, user="bob")
        self.assertEqual((code, body["error"]), (403, "a viewer may not submit jobs in this project"))

    def test_a_good_request_is_sent_and_queued(self) -> None:
        code, body = self.submit("synth", [self.design], top="counter")
        self.assertEqual((code, body["job"]["pending"], body["job"]["kind"]), (202, "submit", "synth"))
        (message,) = self.sent()
        self.assertEqual((message.type, message.body["parameters"], message.body["inputs"]),
                         ("job.submit", {"top": "counter"}, [self.design]))
        self.cloud.inbox.deliver(message)
        self.sync()
        self.assertEqual(self.cloud.effects.calls, [("job_queued", body["job"]["id"])])
        code, listed = self.request("GET", f"/api/jobs?project={self.home}", user="alice")
        self.assertEqual([(j["id"], j["pending"]) for j in listed["jobs"]], [(body["job"]["id"], None)])

    def test_a_kind_the_cloud_no_longer_has_is_refused_once_the_edge_hears(self) -> None:
        self.cloud.publish_kinds(*entries({"copy": KINDS["copy"]}))
        self.assertEqual(self.submit("synth", [self.design])[0], 202, "the edge has not heard yet")
        for seen in self.seen.values():
            seen.clear()
        self.sync()
        for name in ("alice", "bob", "carol"):
            changed = [e.data for e in self.seen[name] if e.kind == "replica.changed"]
            self.assertEqual(changed, [{"tables": ["job_kinds"]}], f"{name} is told to refetch the kinds")
        self.assertEqual(self.submit("synth", [self.design]), (400, {"error": "no job kind 'synth'",
                                                                      "code": "invalid"}))
        code, body = self.request("GET", "/api/v1/job-kinds", user="alice")
        self.assertEqual([k["name"] for k in body["kinds"]], ["copy"])

    def test_an_upload_the_cloud_confirmed_is_an_input_before_sync_brings_it(self) -> None:
        # The cloud registers the file in the transaction that confirms the
        # upload; the file's row may reach the replica a moment later.
        self.edge.db.run_now(lambda c: c.execute("UPDATE uploads SET state = 'in_cloud'"))
        self.assertEqual(self.submit("synth", [self.uploading])[0], 202)
        # Another project's upload is still not this project's input.
        self.edge.db.run_now(lambda c: c.execute("UPDATE uploads SET project = ?", ("ef" * 16,)))
        self.assertEqual(self.submit("synth", [self.uploading])[0], 404)
