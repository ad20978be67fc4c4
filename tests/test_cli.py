"""
The registry's command line: users, keys, projects, the first admin;
clear errors, exit statuses and C{--json}.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from relay import cli
from relay.cloud import admin, sync
from relay.credentials import verify_password
from relay.db import Database
from relay.testing.registry import TEST_COST
from tests.postgresql_fixtures import postgresql_dsn, postgresql_server_database  # noqa: F401


@pytest.fixture(autouse=True)
def cheap_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "DEFAULT_COST", TEST_COST)


class Relay:
    """
    Runs C{relay ...} in process against one database.
    """

    def __init__(self, target: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        self.target = target
        self.capsys = capsys
        self.monkeypatch = monkeypatch

    def __call__(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        args = cli.parser().parse_args([*argv, "--db", self.target])
        status = args.run(args, sys.stdout, sys.stdin) if args.run is admin.run else args.run(args)
        out, err = self.capsys.readouterr()
        return status, out, err

    def json(self, *argv: str, stdin: str = "") -> Any:
        status, out, err = self(*argv, "--json", stdin=stdin)
        assert status == 0, err
        return json.loads(out)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        db = Database(None, self.target)  # type: ignore[arg-type]
        try:
            return [tuple(row) for row in db.run_now(lambda c: c.execute(sql, args).fetchall())]
        finally:
            db.close()


@pytest.fixture
def relay(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Relay:
    return Relay(str(tmp_path / "cloud" / "cloud.db"), capsys, monkeypatch)


def test_user_add_shows_a_generated_password_once(relay: Relay) -> None:
    status, out, err = relay("user", "add", "alice")
    assert (status, err) == (0, "")
    assert out.startswith("created user alice\none-time password (shown once): ")
    password = out.splitlines()[1].rsplit(" ", 1)[1]
    ((stored,),) = relay.query("SELECT password_hash FROM users WHERE name = 'alice'")
    assert verify_password(password, stored)
    assert password not in stored
    # The change is logged for the edges: user, default project, owner (to
    # be numbered by the cloud's publisher).
    assert [k for (k,) in relay.query("SELECT kind FROM sync_pending ORDER BY id")] == [
        "user.put", "project.put", "member.put"]


def test_user_add_json_and_password_from_stdin(relay: Relay) -> None:
    created = relay.json("user", "add", "bob", "--admin", "--password-stdin", stdin="correct horse battery\n")
    assert created["name"] == "bob" and created["is_admin"] is True and "password" not in created
    ((stored,),) = relay.query("SELECT password_hash FROM users WHERE name = 'bob'")
    assert verify_password("correct horse battery", stored)


def test_user_add_errors(relay: Relay) -> None:
    relay("user", "add", "alice")
    assert relay("user", "add", "alice")[0::2] == (1, "relay: user alice already exists\n")
    status, _, err = relay("user", "add", "Alice Smith")
    assert status == 1 and "user name is 1 to 63" in err
    assert relay("user", "add", "carol", "--password-stdin", stdin="short\n")[0::2] == (
        1, "relay: a password needs at least 10 characters\n"
    )
    assert relay.query("SELECT name FROM users ORDER BY name") == [("alice",)]


def test_user_list(relay: Relay) -> None:
    assert relay("user", "list")[1] == "no users\n"
    relay("user", "add", "alice", "--admin")
    relay("user", "add", "bob")
    relay("user", "disable", "bob")
    status, out, _ = relay("user", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ADMIN", "DISABLED", "KEYS", "CREATED", "(UTC)"]
    assert lines[1].split()[:3] == ["alice", "yes", "0"]
    assert lines[2].split()[:3] == ["bob", "yes", "0"]
    users = relay.json("user", "list")
    assert [(u["name"], u["is_admin"], u["disabled"]) for u in users] == [("alice", 1, 0), ("bob", 0, 1)]


def test_disable_enable(relay: Relay) -> None:
    relay("user", "add", "alice")
    assert relay("user", "disable", "alice")[:2] == (0, "disabled user alice\n")
    assert relay("user", "disable", "alice")[0::2] == (1, "relay: user alice is already disabled\n")
    assert relay.json("user", "enable", "alice") == {"name": "alice", "disabled": False}
    assert relay("user", "disable", "nobody")[0::2] == (1, "relay: no user named 'nobody'\n")


def test_passwd(relay: Relay) -> None:
    relay("user", "add", "alice")
    ((before,),) = relay.query("SELECT password_hash FROM users")
    changed = relay.json("user", "passwd", "alice")
    ((after,),) = relay.query("SELECT password_hash FROM users")
    assert before != after and verify_password(changed["password"], after)
    status, out, _ = relay("user", "passwd", "alice", "--password-stdin", stdin="a chosen password\n")
    assert status == 0 and "one-time" not in out
    ((stored,),) = relay.query("SELECT password_hash FROM users")
    assert verify_password("a chosen password", stored)


def test_keys(relay: Relay) -> None:
    relay("user", "add", "alice")
    status, out, _ = relay("key", "create", "alice", "--label", "laptop")
    assert status == 0
    token = out.splitlines()[1]
    assert token.startswith("relay_")
    ((key_id, label, key_hash),) = relay.query("SELECT id, label, key_hash FROM api_keys")
    assert (label, token.split("_")[1]) == ("laptop", key_id)
    assert token not in key_hash
    listed = relay.json("key", "list", "alice")
    assert [(k["id"], k["label"], k["revoked_at"]) for k in listed] == [(key_id, "laptop", None)]
    assert token not in json.dumps(listed)
    assert relay("key", "revoke", key_id)[:2] == (0, f"revoked API key {key_id}\n")
    assert relay("key", "revoke", key_id)[0::2] == (1, f"relay: API key {key_id} is already revoked\n")
    assert relay("key", "create", "nobody")[0] == 1


def test_project_list(relay: Relay) -> None:
    assert relay("project", "list")[1] == "no projects\n"
    relay("user", "add", "alice")
    relay("user", "add", "bob")
    projects = relay.json("project", "list", "--user", "bob")
    assert [(p["name"], p["owner"], p["members"], p["files"]) for p in projects] == [("Home", "bob", 1, 0)]
    status, out, _ = relay("project", "list")
    assert out.splitlines()[0].split() == ["NAME", "OWNER", "MEMBERS", "FILES", "ID"]
    assert len(out.splitlines()) == 3


def test_bootstrap(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELAY_ADMIN_USER", raising=False)
    monkeypatch.delenv("RELAY_ADMIN_PASSWORD", raising=False)
    status, out, _ = relay("admin", "bootstrap")
    assert status == 0
    assert out.startswith("created admin account 'admin'; one-time password (shown once): ")
    password = out.splitlines()[0].rsplit(" ", 1)[1]
    ((stored, is_admin, temporary),) = relay.query("SELECT password_hash, is_admin, must_change_password FROM users")
    assert is_admin == 1 and verify_password(password, stored)
    assert temporary == 1, "the first login must choose a new password"
    assert relay("admin", "bootstrap")[:2] == (0, "the registry has users already; no admin account created\n")
    assert relay.json("admin", "bootstrap") == {"created": False}


def test_bootstrap_from_the_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    relay = Relay(str(tmp_path / "env.db"), capsys, monkeypatch)
    monkeypatch.setenv("RELAY_ADMIN_USER", "root")
    monkeypatch.setenv("RELAY_ADMIN_PASSWORD", "short")
    assert relay("admin", "bootstrap")[0::2] == (1, "relay: RELAY_ADMIN_PASSWORD: a password needs at least 10 characters\n")
    monkeypatch.setenv("RELAY_ADMIN_PASSWORD", "a long enough secret")
    assert relay.json("admin", "bootstrap") == {"created": True, "name": "root"}
    ((stored, temporary),) = relay.query("SELECT password_hash, must_change_password FROM users WHERE name = 'root'")
    assert verify_password("a long enough secret", stored)
    assert temporary == 0, "the operator chose it"


def test_config_file_finds_the_database(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text(f'[cloud]\ndata_dir = "{tmp_path / "state"}"\n')
    assert cli.main(["user", "add", "alice", "--config", str(config)]) == 0
    assert (tmp_path / "state" / "cloud.db").exists()
    assert cli.main(["user", "list", "--config", str(tmp_path / "missing.toml")]) == 1
    assert "no such configuration file" in capsys.readouterr().err
    config.write_text('[registry]\ndsn = "mysql://x"\n')
    assert cli.main(["user", "list", "--config", str(config)]) == 1
    assert "registry.dsn: expected empty" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(["user", "frobnicate"])
    assert exit.value.code == 2
    with pytest.raises(SystemExit) as exit:
        cli.main(["key", "create"])
    assert exit.value.code == 2


def test_on_postgresql(postgresql_dsn: str, capsys: pytest.CaptureFixture[str],  # noqa: F811
                       monkeypatch: pytest.MonkeyPatch) -> None:
    relay = Relay(postgresql_dsn, capsys, monkeypatch)
    relay("user", "add", "alice")
    relay("key", "create", "alice")
    assert [u["name"] for u in relay.json("user", "list")] == ["alice"]
    assert len(relay.query("SELECT id FROM sync_pending")) == 4
    db = Database(None, postgresql_dsn)  # type: ignore[arg-type]
    assert db.run_now(sync.sequence) == 4
    assert db.run_now(sync.head) == 4
    assert len(relay.query("SELECT seq FROM sync_log")) == 4
    db.close()


def test_the_installed_command(tmp_path: Path) -> None:
    """
    The console script, as an operator runs it: exit status and output.
    """
    relay = Path(sys.executable).parent / "relay"
    db = str(tmp_path / "c.db")
    done = subprocess.run([str(relay), "user", "add", "ops", "--db", db, "--json"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == "ops"
    done = subprocess.run([str(relay), "user", "disable", "ghost", "--db", db], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr) == (1, "relay: no user named 'ghost'\n")


def test_only_a_password_chosen_by_the_user_is_kept(relay: Relay) -> None:
    def temporary(name: str) -> int:
        ((flag,),) = relay.query("SELECT must_change_password FROM users WHERE name = ?", name)
        return int(flag)

    relay("user", "add", "alice")
    relay("user", "add", "bob", "--password-stdin", stdin="bob's own password\n")
    assert (temporary("alice"), temporary("bob")) == (1, 0)
    relay("user", "passwd", "bob")  # generated: one-time again
    relay("user", "passwd", "alice", "--password-stdin", stdin="alice's own password\n")
    assert (temporary("alice"), temporary("bob")) == (0, 1)


def test_key_and_user_changes_are_audited(relay: Relay) -> None:
    relay("user", "add", "alice")
    key_id = relay.json("key", "create", "alice")["key_id"]
    relay("key", "revoke", key_id)
    relay("user", "disable", "alice")
    audit = Path(relay.target).parent / "audit.log"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["event"] for r in records] == ["user.added", "key.created", "key.revoked", "user.disabled"]
    assert all(r["actor"].startswith("cli:") for r in records)
    assert records[1]["key_id"] == key_id
    assert "relay_" not in audit.read_text(), "never the key itself"
