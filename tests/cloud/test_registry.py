"""
The registry: its rules, and that every change is logged as numbered
events (on SQLite and on PostgreSQL).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.cloud import sync
from relay.cloud.sync import InvalidEvent
from relay.cloud.transfer_store import Transfer
from relay.cloud.transfers import RegistryFiles
from relay.permissions import Refused
from relay.replication import dump
from relay.testing.registry import CloudSide


def log(cloud: CloudSide) -> list[tuple[int, str, dict[str, Any]]]:
    """
    The numbered events, after numbering those committed.
    """
    cloud.run(sync.sequence)
    return [(e["seq"], e["kind"], e["data"]) for e in cloud.run(sync.events, 0, 10**9)]


def test_add_user_makes_a_default_project(cloud: CloudSide) -> None:
    user = cloud.add_user("alice", "a long password")
    state = cloud.dump()
    assert [u["name"] for u in state["users"]] == ["alice"]
    assert state["users"][0]["password_hash"].startswith("$scrypt$")
    (project,) = state["projects"]
    assert (project["name"], project["owner_id"], project["is_default"]) == ("Home", user["id"], 1)
    assert state["members"] == [{"project_id": project["id"], "user_id": user["id"], "role": "owner"}]
    assert [kind for _, kind, _ in log(cloud)] == ["user.put", "project.put", "member.put"]
    assert [seq for seq, _, _ in log(cloud)] == [1, 2, 3]


@pytest.mark.parametrize("name", ["Alice", "", "-x", "a b", "x" * 64])
def test_bad_user_names_are_refused(cloud: CloudSide, name: str) -> None:
    with pytest.raises(Refused, match="user name"):
        cloud.add_user(name, "a long password")
    assert cloud.dump()["users"] == []


def test_duplicate_user_is_refused_and_changes_nothing(cloud: CloudSide) -> None:
    cloud.add_user("alice", "a long password")
    before = cloud.dump(), log(cloud)
    with pytest.raises(Refused, match="already exists"):
        cloud.add_user("alice", "another password")
    assert (cloud.dump(), log(cloud)) == before


def test_user_changes_are_events(cloud: CloudSide) -> None:
    user = cloud.add_user("alice", "a long password")
    cloud.run(cloud.registry.set_password, user["id"], "$scrypt$new")
    cloud.run(cloud.registry.set_disabled, user["id"], True)
    puts = [data for _, kind, data in log(cloud) if kind == "user.put"]
    assert [(p["password_hash"], p["disabled"]) for p in puts][-2:] == [("$scrypt$new", 0), ("$scrypt$new", 1)]


def test_keys(cloud: CloudSide) -> None:
    user = cloud.add_user("alice", "a long password")
    key = cloud.run(cloud.registry.create_key, user["id"], "laptop")
    stored = cloud.dump()["api_keys"]
    assert [(k["id"], k["label"], k["revoked_at"]) for k in stored] == [(key.key_id, "laptop", None)]
    assert key.token not in json.dumps(stored), "the token itself is never stored"
    cloud.run(cloud.registry.revoke_key, key.key_id)
    assert cloud.dump()["api_keys"][0]["revoked_at"] == cloud.clock.seconds()
    with pytest.raises(Refused, match="already revoked"):
        cloud.run(cloud.registry.revoke_key, key.key_id)
    with pytest.raises(Refused, match="no API key"):
        cloud.run(cloud.registry.revoke_key, "0" * 16)


def test_project_names_are_unique_per_owner(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    bob = cloud.add_user("bob", "a long password")
    project = cloud.run(cloud.registry.create_project, alice["id"], "Apollo")
    cloud.run(cloud.registry.create_project, bob["id"], "Apollo")
    with pytest.raises(Refused, match="already have a project named 'Apollo'"):
        cloud.run(cloud.registry.create_project, alice["id"], " Apollo ")
    with pytest.raises(Refused, match="already have"):
        cloud.run(cloud.registry.rename_project, cloud.default_project(alice["id"]), "Apollo")
    with pytest.raises(Refused, match="cannot be empty"):
        cloud.run(cloud.registry.rename_project, project, "   ")


def test_default_project_cannot_be_deleted(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    with pytest.raises(Refused, match="default project"):
        cloud.run(cloud.registry.delete_project, cloud.default_project(alice["id"]))


def test_delete_project_cascades_in_one_event(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    bob = cloud.add_user("bob", "a long password")
    project = cloud.run(cloud.registry.create_project, alice["id"], "Apollo")
    cloud.run(cloud.registry.set_member, project, bob["id"], "viewer")
    file_id = cloud.run(lambda c: cloud.registry.put_file(c, project, "a.bin", 3, sha256="a" * 64))
    cloud.run(cloud.registry.submit_job, project, alice["id"], "render", {"n": 1}, [file_id])
    seq = len(log(cloud))
    cloud.run(cloud.registry.delete_project, project)
    state = cloud.dump()
    assert all(project not in json.dumps(rows) for rows in state.values())
    assert [(kind, data) for _, kind, data in log(cloud)[seq:]] == [("project.delete", {"id": project})]


def test_members(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    bob = cloud.add_user("bob", "a long password")
    project = cloud.default_project(alice["id"])
    cloud.run(cloud.registry.set_member, project, bob["id"], "viewer")
    cloud.run(cloud.registry.set_member, project, bob["id"], "member")
    assert cloud.run(cloud.registry.role, project, bob["id"]) == "member"
    with pytest.raises(Refused, match="already a member"):
        cloud.run(cloud.registry.set_member, project, bob["id"], "member")
    with pytest.raises(Refused, match="owner's role"):
        cloud.run(cloud.registry.set_member, project, alice["id"], "viewer")
    with pytest.raises(Refused, match="owner cannot be removed"):
        cloud.run(cloud.registry.remove_member, project, alice["id"])
    cloud.run(cloud.registry.remove_member, project, bob["id"])
    with pytest.raises(Refused, match="not a member"):
        cloud.run(cloud.registry.remove_member, project, bob["id"])


def test_job_state_machine(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    project = cloud.default_project(alice["id"])
    job = cloud.run(cloud.registry.submit_job, project, alice["id"], "render", {}, [])
    with pytest.raises(Refused, match="is queued"):
        cloud.run(cloud.registry.set_progress, job, 0.5)
    cloud.run(cloud.registry.start_job, job)
    cloud.run(cloud.registry.set_progress, job, 0.5)
    result = cloud.run(lambda c: cloud.registry.put_file(c, project, "out.txt", 10, sha256="b" * 64))
    cloud.run(lambda c: cloud.registry.finish_job(c, job, "succeeded", result_files=[result]))
    row = cloud.dump()["jobs"][0]
    assert (row["state"], row["progress"], row["result_files"]) == ("succeeded", 1.0, [result])
    with pytest.raises(Refused, match="already finished"):
        cloud.run(cloud.registry.cancel_job, job)


def test_timed_out_attempts_and_result_files(cloud: CloudSide) -> None:
    """
    On each database: timed_out is an outcome the registry (and its CHECK)
    accepts, a job counts its attempts, a job's result files say so.
    """
    alice = cloud.add_user("alice", "a long password")
    project = cloud.default_project(alice["id"])
    job = cloud.run(cloud.registry.submit_job, project, alice["id"], "render", {}, [])
    cloud.run(cloud.registry.start_job, job, 2)
    log_file = cloud.run(lambda c: cloud.registry.put_file(
        c, project, "render.log", 3, sha256="c" * 64, kind="result", job_id=job))
    cloud.run(lambda c: cloud.registry.finish_job(c, job, "timed_out", result_files=[log_file],
                                                  error="timed out after 2 s"))
    [row] = cloud.dump()["jobs"]
    assert (row["state"], row["attempts"], row["error"]) == ("timed_out", 2, "timed out after 2 s")
    [file] = cloud.dump()["files"]
    assert (file["kind"], file["job_id"]) == ("result", job)
    with pytest.raises(Refused, match="already finished"):
        cloud.run(cloud.registry.cancel_job, job)
    with pytest.raises(ValueError):
        cloud.run(lambda c: cloud.registry.put_file(c, project, "x", 1, kind="result"))
    with pytest.raises(ValueError):
        cloud.run(lambda c: cloud.registry.finish_job(c, job, "lost"))
    uploaded = cloud.run(lambda c: cloud.registry.put_file(c, project, "in.txt", 1))
    assert cloud.run(cloud.registry.file, uploaded)["kind"] == "upload"


def test_job_inputs_must_be_in_the_project(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    bob = cloud.add_user("bob", "a long password")
    bobs = cloud.default_project(bob["id"])
    theirs = cloud.run(lambda c: cloud.registry.put_file(c, bobs, "b", 1))
    with pytest.raises(Refused, match="not in this project"):
        cloud.run(cloud.registry.submit_job, cloud.default_project(alice["id"]), alice["id"], "x", {}, [theirs])


def test_an_event_edges_would_refuse_is_refused_here(cloud: CloudSide) -> None:
    """
    The log validates each event against the schema the edges check it
    with: a bad one must roll the change back, not poison every replica.
    """
    alice = cloud.add_user("alice", "a long password")
    home = cloud.default_project(alice["id"])
    before = cloud.dump(), log(cloud)
    with pytest.raises(InvalidEvent, match="sha256"):
        cloud.run(lambda c: cloud.registry.put_file(c, home, "f", 1, sha256="XYZ"))
    assert (cloud.dump(), log(cloud)) == before


def test_numbers_have_no_gaps_after_a_rollback(cloud: CloudSide) -> None:
    cloud.add_user("alice", "a long password")

    def add_then_fail(conn: Any) -> None:
        cloud.registry.add_user(conn, "bob", "$scrypt$x")
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        cloud.run(add_then_fail)
    cloud.add_user("carol", "a long password")
    assert [seq for seq, _, _ in log(cloud)] == list(range(1, 7))


def test_prune_moves_the_horizon(cloud: CloudSide) -> None:
    for name in ("a1", "a2", "a3"):
        cloud.add_user(name, "a long password")
    assert cloud.run(sync.prune, 4) == 5
    assert [seq for seq, _, _ in log(cloud)] == [6, 7, 8, 9]
    assert cloud.run(sync.horizon) == 5
    assert cloud.run(sync.prune, 100) == 5


def test_dump_is_the_same_function_for_both_sides(cloud: CloudSide) -> None:
    cloud.add_user("alice", "a long password")
    assert cloud.run(dump) == cloud.dump()
    assert set(cloud.dump()) == {"users", "api_keys", "projects", "members", "files", "jobs", "job_kinds"}


def test_a_file_keeps_who_uploaded_it_and_its_event_says_so(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    bob = cloud.add_user("bob", "a long password")
    project = cloud.default_project(alice["id"])
    file_id = cloud.run(lambda c: cloud.registry.put_file(c, project, "a.bin", 3, uploaded_by=bob["id"]))
    # A later state of the file (a new record of it) does not change who uploaded it.
    cloud.run(lambda c: cloud.registry.put_file(c, project, "a.bin", 3, sha256="a" * 64, file_id=file_id))
    assert cloud.run(cloud.registry.file, file_id)["uploaded_by"] == bob["id"]
    puts = [data for _, kind, data in log(cloud) if kind == "file.put"]
    assert [data["uploaded_by"] for data in puts] == [bob["id"], bob["id"]]


def test_a_transferred_file_is_registered_as_its_owners_upload(cloud: CloudSide) -> None:
    alice = cloud.add_user("alice", "a long password")
    project = cloud.default_project(alice["id"])
    transfer = Transfer(
        id="t" * 32, edge="edge-1", file_id="f" * 32, project=project, owner=alice["id"], name="plan.dwg",
        content_type="application/octet-stream", size=3, sha256="a" * 64, part_size=3, part_count=1,
        object_key="projects/p/files/f", upload_id="u", state="completing",
    )
    cloud.run(RegistryFiles(cloud.registry).register_file, transfer)
    row = cloud.run(cloud.registry.file, "f" * 32)
    assert (row["name"], row["state"], row["kind"], row["uploaded_by"]) == ("plan.dwg", "stored", "upload",
                                                                            alice["id"])
