"""
The status bar's source: C{GET /api/v1/status} (the link, the caller's
commands and upload bytes waiting for it) and the C{status} event sent to
open streams when it changes.
"""

from __future__ import annotations

import json
from typing import Any

import treq

from relay.edge.web.status import iso
from tests.edge.web.world import BASE, ApiWorld


class StatusTests(ApiWorld):
    def status(self, user: str = "alice") -> dict[str, Any]:
        code, body = self.request("GET", "/api/v1/status", user=user)
        self.assertEqual(code, 200, body)
        return body

    def upload(self, owner: str, filename: str, state: str, offset: int, transferred: int = 0) -> str:
        upload_id = f"{filename}-{state}"
        now = self.clock.seconds()
        self.edge.db.run_now(lambda c: c.execute(
            'INSERT INTO uploads (id, owner, project, filename, filetype, length, "offset", state, created, '
            "updated, transferred) VALUES (?, ?, ?, ?, '', ?, ?, ?, ?, ?, ?)",
            (upload_id, owner, self.home, filename, offset, offset, state, now, now, transferred),
        ))
        return upload_id

    def open_stream(self, user: str) -> list[bytes]:
        d = self.treq.get(BASE + "/api/v1/events",
                          headers={"Cookie": [f"relay_session={self.session(user)[0]}"]})
        self.treq.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        chunks: list[bytes] = []
        treq.collect(response, chunks.append)
        self.treq.flush()
        return chunks

    def told(self, chunks: list[bytes]) -> list[dict[str, Any]]:
        frames = [dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
                  for block in b"".join(chunks).decode().split("\n\n") if block]
        return [json.loads(f["data"]) for f in frames if f.get("event") == "status"]

    def test_link_up_and_nothing_pending(self) -> None:
        body = self.status()
        self.assertEqual(body, {"link": {"state": "up", "since": iso(self.clock.seconds())},
                                "pending": {"commands": 0, "bytes": 0, "items": []}})
        self.assertRegex(body["link"]["since"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def test_commands_and_uploads_waiting(self) -> None:
        self.link = ("down", self.clock.seconds() - 30)
        code, created = self.request("POST", "/api/v1/projects", {"name": "Zeus"}, user="alice")
        self.request("PATCH", f"/api/v1/projects/{self.home}/members/{self.bob['id']}", {"role": "member"},
                     user="alice")
        self.upload(self.alice["id"], "big.bin", "transferring", 1000, transferred=300)
        self.upload(self.alice["id"], "new.bin", "receiving", 50)
        self.upload(self.alice["id"], "done.bin", "in_cloud", 70, transferred=70)
        self.upload(self.bob["id"], "bobs.bin", "staged", 999)
        body = self.status()
        self.assertEqual(body["link"], {"state": "down", "since": iso(self.clock.seconds() - 30)})
        pending = body["pending"]
        self.assertEqual((pending["commands"], pending["bytes"]), (2, 700 + 50))
        self.assertEqual(
            [(i["kind"], i["label"], i["state"]) for i in pending["items"]],
            [("command", "create project Zeus", "pending"), ("command", "make bob member of Home", "pending"),
             ("upload", "big.bin", "transferring"), ("upload", "new.bin", "receiving")],
        )
        self.assertEqual(pending["items"][0]["id"], created["command_id"])
        self.assertTrue(all(i["since"] == iso(self.clock.seconds()) for i in pending["items"]))
        bobs = self.status("bob")["pending"]
        self.assertEqual((bobs["commands"], bobs["bytes"], [i["label"] for i in bobs["items"]]),
                         (0, 999, ["bobs.bin"]))
        self.round_trip()
        self.assertEqual(self.status()["pending"]["commands"], 0)

    def test_needs_credentials_but_not_a_changed_password(self) -> None:
        code, body = self.request("GET", "/api/v1/status")
        self.assertEqual((code, body["code"]), (401, "unauthenticated"))
        self.assertEqual(self.request("GET", "/api/v1/status", bearer=self.key.token)[0], 200)

    def test_status_events_when_it_changes(self) -> None:
        chunks = self.open_stream("alice")
        self.clock.advance(5)
        self.treq.flush()
        self.assertEqual(self.told(chunks), [], "nothing changed")
        # The link goes down: told within the poll.
        self.link = ("down", self.clock.seconds())
        self.clock.advance(1)
        self.treq.flush()
        (down,) = self.told(chunks)
        self.assertEqual(down["link"], {"state": "down", "since": iso(self.clock.seconds() - 1)})
        self.assertEqual(down, self.status())
        # A command: told (once, after the gathering delay) with the new count.
        self.request("POST", "/api/v1/projects", {"name": "Zeus"}, user="alice")
        self.clock.advance(0.5)
        self.treq.flush()
        self.assertEqual([s["pending"]["commands"] for s in self.told(chunks)], [0, 1])
        self.link = ("connecting", down["link"] and self.clock.seconds())
        self.clock.advance(1)
        self.link = ("up", self.clock.seconds())
        self.clock.advance(1)
        self.round_trip()
        self.clock.advance(0.5)
        self.treq.flush()
        told = self.told(chunks)
        self.assertEqual([(s["link"]["state"], s["pending"]["commands"]) for s in told],
                         [("down", 0), ("down", 1), ("connecting", 1), ("up", 1), ("up", 0)])
        # bob has no stream open: he is told nothing.
        self.assertNotIn("status", self.kinds("bob"))
        self.clock.advance(10)
        self.treq.flush()
        self.assertEqual(len(self.told(chunks)), 5, "no repeats of the same status")
