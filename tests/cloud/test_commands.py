"""
Edge commands on the cloud: what each role may do, decided against the
registry whatever the edge believed.  Every refusal (a non-member, a
viewer, a disabled user, a revoked key) is answered with a reason and
changes nothing; each allowed command is applied exactly once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from relay.cloud import sync
from relay.link.envelope import Envelope
from relay.testing.registry import CloudSide


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Setting:
    """
    alice owns Apollo (with a file and a queued job of hers); bob is a
    member, carol a viewer, dave no member; erin was a member and is now
    disabled; alice has an API key that was revoked and one that was not.
    """

    cloud: CloudSide
    users: dict[str, str]
    project: str
    file: str
    job: str
    revoked_key: str
    key: str

    def actor(self, who: str, via: str = "session") -> dict[str, Any]:
        if via == "revoked key":
            return {"user_id": self.users[who], "via": "key", "key_id": self.revoked_key}
        if via == "key":
            return {"user_id": self.users[who], "via": "key", "key_id": self.key}
        return {"user_id": self.users[who], "via": "session"}

    def send(self, type: str, actor: dict[str, Any], **fields: Any) -> str:
        command_id = new_id()
        message = Envelope(
            type=type, source="edge:shanghai-1", time=self.cloud.clock.seconds(),
            body={"command_id": command_id, "actor": actor, **fields},
        )
        self.cloud.inbox.deliver(message)
        return command_id

    def outcome(self, command_id: str) -> tuple[str, str | None]:
        row = self.cloud.run(
            lambda c: c.execute("SELECT status, reason FROM commands WHERE command_id = ?", (command_id,)).fetchone()
        )
        return row[0], row[1]


@pytest.fixture
def setting(cloud: CloudSide) -> Setting:
    users = {name: cloud.add_user(name, "a long password")["id"] for name in ("alice", "bob", "carol", "dave", "erin")}
    r = cloud.registry
    project = cloud.run(r.create_project, users["alice"], "Apollo")
    cloud.run(r.set_member, project, users["bob"], "member")
    cloud.run(r.set_member, project, users["carol"], "viewer")
    cloud.run(r.set_member, project, users["erin"], "member")
    cloud.run(r.set_disabled, users["erin"], True)
    file = cloud.run(lambda c: r.put_file(c, project, "data.csv", 10, sha256="c" * 64))
    job = cloud.run(r.submit_job, project, users["alice"], "render", {}, [file])
    revoked = cloud.run(r.create_key, users["alice"], "old").key_id
    cloud.run(r.revoke_key, revoked)
    key = cloud.run(r.create_key, users["alice"], "new").key_id
    return Setting(cloud, users, project, file, job, revoked, key)


def commands(s: Setting) -> dict[str, tuple[str, dict[str, Any]]]:
    """
    One command of each type, each of which alice (the owner) may give.
    """
    return {
        "rename": ("project.rename", {"project_id": s.project, "name": "Artemis"}),
        "delete": ("project.delete", {"project_id": s.project}),
        "add member": ("project.member.add", {"project_id": s.project, "user_id": s.users["dave"], "role": "viewer"}),
        "remove member": ("project.member.remove", {"project_id": s.project, "user_id": s.users["bob"]}),
        "role": ("project.member.role", {"project_id": s.project, "user_id": s.users["carol"], "role": "member"}),
        "submit": ("job.submit", {"project_id": s.project, "job_id": new_id(), "kind": "render",
                                  "parameters": {"frames": 10}, "inputs": [s.file]}),
        "cancel": ("job.cancel", {"job_id": s.job}),
        "delete file": ("file.delete", {"file_id": s.file}),
        "create": ("project.create", {"project_id": new_id(), "name": "Mine", "description": ""}),
    }




@pytest.mark.parametrize(
    "who, via, names",
    [
        ("dave", "session", ["rename", "delete", "add member", "remove member", "role", "submit", "cancel",
                         "delete file"]),
        ("carol", "session", ["rename", "delete", "add member", "remove member", "role", "submit", "cancel",
                         "delete file"]),
        ("erin", "session", None),
        ("alice", "revoked key", None),
    ],
    ids=["non-member", "viewer", "disabled user", "revoked key"],
)
def test_refused_with_a_reason_and_nothing_changes(setting: Setting, who: str, via: str, names: list[str] | None) -> None:
    cloud = setting.cloud
    for name, (type, fields) in commands(setting).items():
        if names is not None and name not in names:
            continue
        before = cloud.dump()
        head = cloud.run(sync.sequence)
        command_id = setting.send(type, setting.actor(who, via), **fields)
        status, reason = setting.outcome(command_id)
        assert status == "rejected", f"{name} by {who} via {via} was applied"
        assert reason, f"{name} by {who}: no reason"
        assert cloud.dump() == before, f"{name} by {who} changed the registry"
        # Exactly one event: the refusal, for the edge to show.
        cloud.run(sync.sequence)
        (event,) = cloud.run(sync.events, head, head + 10)
        assert event["kind"] == "command.rejected"
        assert event["data"] == {"command_id": command_id, "edge": "shanghai-1", "reason": reason,
                                 "code": event["data"]["code"]}


@pytest.mark.parametrize("via", ["session", "key"])
def test_the_owner_may_do_each(setting: Setting, via: str) -> None:
    """
    The control for the refusals above: the same commands, by the owner,
    are applied (so a refusal is about the actor, not the command).
    """
    for name, (type, fields) in commands(setting).items():
        if name == "delete":
            continue  # last, below
        command_id = setting.send(type, setting.actor("alice", via), **fields)
        assert setting.outcome(command_id) == ("applied", None), name
    command_id = setting.send("project.delete", setting.actor("alice", via), project_id=setting.project)
    assert setting.outcome(command_id) == ("applied", None)
    assert setting.project not in [p["id"] for p in setting.cloud.dump()["projects"]]
    # The project's files went with it, with their effects (their S3 objects are deleted).
    assert ("file_deleted", setting.file) in setting.cloud.effects.calls


def test_reasons(setting: Setting) -> None:
    s = setting
    reason = lambda who, via, name: s.outcome(s.send(commands(s)[name][0], s.actor(who, via), **commands(s)[name][1]))[1]  # noqa: E731
    assert reason("dave", "session", "rename") == "no such project"
    assert reason("dave", "session", "cancel") == "no such job"
    assert reason("dave", "session", "delete file") == "no such file"
    assert reason("carol", "session", "rename") == "a viewer may not rename this project"
    assert reason("carol", "session", "submit") == "a viewer may not submit jobs in this project"
    assert reason("erin", "session", "create") == "user erin is disabled"
    assert reason("alice", "revoked key", "rename") == "the API key was revoked"


def test_member_rules(setting: Setting) -> None:
    s = setting
    bob = s.actor("bob")
    assert s.outcome(s.send("project.rename", bob, project_id=s.project, name="X"))[0] == "rejected"
    assert s.outcome(s.send("job.cancel", bob, job_id=s.job)) == (
        "rejected", "only the project's owner may cancel other people's jobs"
    )
    mine = new_id()
    assert s.outcome(s.send("job.submit", bob, project_id=s.project, job_id=mine, kind="k", parameters={}, inputs=[]))[0] == "applied"
    assert s.outcome(s.send("job.cancel", bob, job_id=mine))[0] == "applied"
    # A member or viewer may leave; not remove someone else.
    carol = s.actor("carol")
    assert s.outcome(s.send("project.member.remove", carol, project_id=s.project, user_id=s.users["bob"]))[0] == "rejected"
    assert s.outcome(s.send("project.member.remove", carol, project_id=s.project, user_id=s.users["carol"]))[0] == "applied"


def test_unknown_user_and_foreign_key(setting: Setting) -> None:
    s = setting
    ghost = {"user_id": new_id(), "via": "session"}
    assert s.outcome(s.send("project.create", ghost, project_id=new_id(), name="x", description="")) == (
        "rejected", "unknown user"
    )
    bob_with_alices_key = {"user_id": s.users["bob"], "via": "key", "key_id": s.key}
    assert s.outcome(s.send("project.create", bob_with_alices_key, project_id=new_id(), name="x", description="")) == (
        "rejected", "unknown API key"
    )


def test_a_command_is_applied_once(setting: Setting) -> None:
    """
    The same command twice (the edge sent it again in a new message): one
    effect, one answer.
    """
    s = setting
    project_id = new_id()
    body = {"command_id": new_id(), "actor": s.actor("bob"), "project_id": project_id, "name": "Twice",
            "description": ""}
    for _ in range(2):
        s.cloud.inbox.deliver(Envelope(type="project.create", source="edge:e1", time=0.0, body=body))
    assert [p["name"] for p in s.cloud.dump()["projects"]].count("Twice") == 1
    s.cloud.run(sync.sequence)
    answers = [e for e in s.cloud.run(sync.events, 0, 10**9) if e["command_id"] == body["command_id"]]
    assert [e["kind"] for e in answers] == ["project.put", "member.put", "command.applied"]


def test_conflicting_new_id_is_refused(setting: Setting) -> None:
    s = setting
    outcome = s.outcome(s.send("job.submit", s.actor("alice"), project_id=s.project, job_id=s.job, kind="k",
                               parameters={}, inputs=[]))
    assert outcome == ("rejected", "a job with this id exists already")


def test_role_changes(setting: Setting) -> None:
    """
    The owner changes roles; the cloud checks again what the edge checked:
    only members have roles, the owner's own role changes only by handing
    the project over, and handing over makes the previous owner a member.
    """
    s = setting
    alice, r = s.actor("alice"), s.cloud.registry
    role = lambda who, value, actor=alice: s.outcome(s.send(  # noqa: E731
        "project.member.role", actor, project_id=s.project, user_id=s.users[who], role=value))
    assert role("dave", "member") == ("rejected", "no such member")
    assert role("bob", "member") == ("rejected", "already a member of this project")
    assert role("alice", "viewer") == (
        "rejected", "the owner's role changes only by making another member the owner")
    assert role("carol", "member", s.actor("bob")) == ("rejected", "a member may not change this project's members")
    assert role("carol", "member") == ("applied", None)
    assert s.cloud.run(r.role, s.project, s.users["carol"]) == "member"
    # bob has a project named Apollo already: he cannot own a second one.
    s.cloud.run(r.create_project, s.users["bob"], "Apollo")
    assert role("bob", "owner")[0] == "rejected"
    assert role("carol", "owner") == ("applied", None)
    assert s.cloud.run(r.project, s.project)["owner_id"] == s.users["carol"]
    assert s.cloud.run(r.role, s.project, s.users["alice"]) == "member"
    # alice is no longer the owner: she may not change roles any more.
    assert role("bob", "viewer")[0] == "rejected"
    default = s.cloud.default_project(s.users["alice"])
    s.cloud.run(r.set_member, default, s.users["bob"], "member")
    assert s.outcome(s.send("project.member.role", alice, project_id=default, user_id=s.users["bob"],
                            role="owner")) == ("rejected", "a user's default project cannot be handed over")


def test_key_commands(setting: Setting) -> None:
    """
    A key made at an edge is registered with the hash it names, for the
    actor only; a user revokes only their own keys, and a revoked key can
    act no more.
    """
    s = setting
    key_id, key_hash = "ab" * 8, "sha256$" + "1" * 64
    created = s.send("user.key.create", s.actor("bob"), key_id=key_id, key_hash=key_hash, name="laptop")
    assert s.outcome(created) == ("applied", None)
    row = s.cloud.run(lambda c: c.execute("SELECT user_id, key_hash, label FROM api_keys WHERE id = ?",
                                          (key_id,)).fetchone())
    assert tuple(row) == (s.users["bob"], key_hash, "laptop")
    again = s.send("user.key.create", s.actor("carol"), key_id=key_id, key_hash=key_hash, name="mine")
    assert s.outcome(again) == ("rejected", "an API key with this id exists already")
    assert s.outcome(s.send("user.key.revoke", s.actor("alice"), key_id=key_id)) == (
        "rejected", f"no API key {key_id}")
    via_key = {"user_id": s.users["bob"], "via": "key", "key_id": key_id}
    assert s.outcome(s.send("user.key.revoke", via_key, key_id=key_id)) == ("applied", None)
    assert s.outcome(s.send("project.create", via_key, project_id=new_id(), name="B", description="")) == (
        "rejected", "the API key was revoked")
    assert s.outcome(s.send("user.key.revoke", s.actor("bob"), key_id=key_id)) == (
        "rejected", f"API key {key_id} is already revoked")
