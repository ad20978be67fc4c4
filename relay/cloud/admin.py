"""
The registry's administration commands (C{relay user}, C{relay key},
C{relay project}, C{relay admin bootstrap}).

They work on the cloud's database directly (SQLite file or PostgreSQL, from
the cloud's configuration), no reactor and no broker: each change is logged
as events in the same transaction, and the running C{relay-cloud} sends
them to the edges within a second.  Passwords and API keys are shown once,
when made, and stored only as hashes.

Exit status: 0 done, 1 refused or failed (the message says why), 2 the
command line was wrong.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from relay.audit import AuditLog
from relay.cloud.config import CloudConfig, database_target
from relay.cloud.registry import Registry
from relay.cloud.sync import EventLog
from relay.cloud.tap import SCHEMAS
from relay.config import ConfigError, config_path, load, relative_to
from relay.credentials import (
    DEFAULT_COST,
    ScryptCost,
    WeakPassword,
    check_password_strength,
    generate_password,
    hash_password,
)
from relay.db import Database, MigrationError, database_errors, is_postgresql
from relay.permissions import Refused

DEFAULT_CONFIG = "etc/cloud.toml"


class WallClock:
    """
    The time for a command-line tool, which has no reactor.
    """

    def seconds(self) -> float:
        return time.time()


class Failed(Exception):
    """
    The command cannot be done; C{str()} says why (exit status 1).
    """


def open_registry(args: argparse.Namespace) -> tuple[Database, Registry]:
    """
    The cloud's database (migrated to the current schemas) and a registry
    on it.
    """
    if args.db:
        target: Path | str = args.db
        audit_path = None if is_postgresql(target) else Path(target).parent / "audit.log"
    else:
        path = config_path(args.config, DEFAULT_CONFIG)
        config = load(CloudConfig, path)
        target = database_target(config, Path.cwd())
        audit_path = relative_to(relative_to(Path.cwd(), config.cloud.data_dir), config.log.audit)
    args.audit_path = audit_path
    if not is_postgresql(target):
        Path(target).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = Database(None, target, SCHEMAS)  # type: ignore[arg-type]
    return db, Registry(EventLog(WallClock()), WallClock())  # type: ignore[arg-type]


def _read_password(args: argparse.Namespace, stdin: TextIO) -> tuple[str, bool]:
    """
    The password from standard input (C{--password-stdin}), else a new
    one; and whether it was generated (and so must be shown).
    """
    if getattr(args, "password_stdin", False):
        password = stdin.readline().rstrip("\r\n")
        try:
            check_password_strength(password)
        except WeakPassword as e:
            raise Failed(str(e)) from None
        return password, False
    return generate_password(), True


def _user(db: Database, registry: Registry, name: str) -> Any:
    user = db.run_now(registry.user_by_name, name)
    if user is None:
        raise Failed(f"no user named {name!r}")
    return user


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


def _listing(
    args: argparse.Namespace, out: TextIO, items: list[dict[str, Any]], what: str,
    header: list[str], row: Callable[[dict[str, Any]], list[str]],
) -> None:
    """
    A list command's output: the items as JSON with C{--json}, else a
    table under C{header} (or "no <what>").
    """
    if args.json:
        print(json.dumps(items), file=out)
        return
    if not items:
        print(f"no {what}", file=out)
        return
    rows = [header, *(row(item) for item in items)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip(), file=out)


# -- the commands -------------------------------------------------------------


def user_add(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
    password, generated = _read_password(args, stdin)
    password_hash = hash_password(password, args.cost)
    # A generated password is one-time: the user must change it first.
    user = db.run_now(
        lambda c: registry.add_user(c, args.name, password_hash, is_admin=args.admin, temporary=generated)
    )
    _audited(args, "user.added", user=user["id"], name=args.name, is_admin=bool(args.admin))
    if args.json:
        shown = {"password": password} if generated else {}
        print(json.dumps({"id": user["id"], "name": user["name"], "is_admin": bool(user["is_admin"]), **shown}), file=out)
        return
    role = "admin " if args.admin else ""
    print(f"created {role}user {user['name']}", file=out)
    if generated:
        print(f"one-time password (shown once): {password}", file=out)
        print("(the user chooses a new one at the first login)", file=out)


def user_list(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
    _listing(
        args, out, db.run_now(registry.users), "users", ["NAME", "ADMIN", "DISABLED", "KEYS", "CREATED (UTC)"],
        lambda u: [u["name"], "yes" if u["is_admin"] else "", "yes" if u["disabled"] else "",
                   str(u["active_keys"]), _when(u["created_at"])],
    )


def _set_disabled(disabled: bool) -> Callable[..., None]:
    def command(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
        user = _user(db, registry, args.name)
        if bool(user["disabled"]) == disabled:
            raise Failed(f"user {args.name} is already {'disabled' if disabled else 'enabled'}")
        db.run_now(registry.set_disabled, user["id"], disabled)
        _audited(args, "user.disabled" if disabled else "user.enabled", user=user["id"])
        state = "disabled" if disabled else "enabled"
        print(json.dumps({"name": args.name, "disabled": disabled}) if args.json else f"{state} user {args.name}", file=out)

    return command


def user_passwd(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
    user = _user(db, registry, args.name)
    password, generated = _read_password(args, stdin)
    db.run_now(
        lambda c: registry.set_password(c, user["id"], hash_password(password, args.cost), temporary=generated)
    )
    _audited(args, "user.password", user=user["id"])
    if args.json:
        print(json.dumps({"name": args.name, **({"password": password} if generated else {})}), file=out)
        return
    print(f"changed the password of {args.name}; edges accept it once they have the change", file=out)
    if generated:
        print(f"one-time password (shown once): {password}", file=out)
        print("(the user chooses a new one at the first login)", file=out)


def key_create(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
    user = _user(db, registry, args.name)
    key = db.run_now(registry.create_key, user["id"], args.label)
    _audited(args, "key.created", user=user["id"], key_id=key.key_id, label=args.label)
    if args.json:
        print(json.dumps({"key_id": key.key_id, "user": args.name, "key": key.token}), file=out)
        return
    print(f"created API key {key.key_id} for {args.name}; the key (shown once):", file=out)
    print(key.token, file=out)


def key_revoke(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
    db.run_now(registry.revoke_key, args.key_id)
    _audited(args, "key.revoked", key_id=args.key_id)
    print(json.dumps({"key_id": args.key_id, "revoked": True}) if args.json else f"revoked API key {args.key_id}", file=out)


def key_list(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
    user_id = _user(db, registry, args.name)["id"] if args.name else None
    _listing(
        args, out, db.run_now(registry.keys, user_id), "API keys",
        ["KEY ID", "USER", "LABEL", "CREATED (UTC)", "REVOKED (UTC)"],
        lambda k: [k["id"], k["user"], k["label"], _when(k["created_at"]), _when(k["revoked_at"])],
    )


def project_list(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
    user_id = _user(db, registry, args.user)["id"] if args.user else None
    _listing(
        args, out, db.run_now(registry.projects, user_id), "projects", ["NAME", "OWNER", "MEMBERS", "FILES", "ID"],
        lambda p: [p["name"], p["owner"], str(p["members"]), str(p["files"]), p["id"]],
    )


def bootstrap_admin(
    db: Database, registry: Registry, environ: Mapping[str, str], cost: ScryptCost = DEFAULT_COST
) -> tuple[str, str | None] | None:
    """
    On first start (no user at all), create an admin account: named by
    C{RELAY_ADMIN_USER} (default C{admin}), with C{RELAY_ADMIN_PASSWORD} or
    a generated password.  Returns the name and the generated password
    (C{None} when it came from the environment), or C{None} when users
    exist already.
    """
    name = environ.get("RELAY_ADMIN_USER") or "admin"
    given = environ.get("RELAY_ADMIN_PASSWORD")
    if given is not None:
        try:
            check_password_strength(given)
        except WeakPassword as e:
            raise Failed(f"RELAY_ADMIN_PASSWORD: {e}") from None
    password = given if given is not None else generate_password()
    password_hash = hash_password(password, cost)

    def create(conn: Any) -> bool:
        if conn.execute("SELECT 1 FROM users LIMIT 1").fetchone():
            return False
        registry.add_user(conn, name, password_hash, is_admin=True, temporary=given is None)
        return True

    if not db.run_now(create):
        return None
    return name, None if given is not None else password


def admin_bootstrap(args: argparse.Namespace, db: Database, registry: Registry, out: TextIO, stdin: TextIO) -> None:
    created = bootstrap_admin(db, registry, os.environ, args.cost)
    if args.json:
        print(json.dumps(
            {"created": created is not None}
            | ({} if created is None else {"name": created[0]} | ({"password": created[1]} if created[1] else {}))
        ), file=out)
        return
    if created is None:
        print("the registry has users already; no admin account created", file=out)
        return
    name, password = created
    if password is None:
        print(f"created admin account {name!r} with the password from RELAY_ADMIN_PASSWORD", file=out)
    else:
        print(f"created admin account {name!r}; one-time password (shown once): {password}", file=out)
        print("log in with it at the edge, which asks for a new one before anything else", file=out)


def _audited(args: argparse.Namespace, event: str, **fields: Any) -> None:
    """
    An audit record of an administration command (C{log.audit}, next to the
    cloud's database), made by whoever runs the command on this host.
    """
    path = getattr(args, "audit_path", None)
    if path is None:
        return
    audit = AuditLog(path, WallClock())  # type: ignore[arg-type]
    try:
        audit.record(event, actor=f"cli:{getpass.getuser()}", via="relay command", **fields)
    finally:
        audit.close()


# -- the command line -----------------------------------------------------------


def run(args: argparse.Namespace, out: TextIO = sys.stdout, stdin: TextIO = sys.stdin) -> int:
    try:
        db, registry = open_registry(args)
    except ConfigError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        if not isinstance(e, (MigrationError, *database_errors())):
            raise
        print(f"relay: cannot open the registry database: {e}", file=sys.stderr)
        return 1
    try:
        args.command_function(args, db, registry, out, stdin)
    except (Failed, Refused) as e:
        print(f"relay: {e}", file=sys.stderr)
        return 1
    except database_errors() as e:
        print(f"relay: database error: {e}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0


def add_commands(commands: Any) -> None:
    """
    Add C{user}, C{key}, C{project} and C{admin} to the C{relay} command.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help=f"the cloud's configuration file [default: $RELAY_CONFIG or {DEFAULT_CONFIG}]")
    common.add_argument("--db", help="the cloud's database itself: a SQLite file or a postgresql:// URL")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    common.set_defaults(run=run, cost=DEFAULT_COST)

    def leaf(group: Any, name: str, function: Callable[..., None], help: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=help, description=help)
        parser.set_defaults(command_function=function)
        return parser

    users = commands.add_parser("user", help="manage the registry's users").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = leaf(users, "add", user_add, "create a user (and their default project)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make the user an administrator")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input "
                     "(default: generate one and show it once)")
    leaf(users, "list", user_list, "list users")
    leaf(users, "disable", _set_disabled(True), "disable a user (refused at every edge once synced)").add_argument("name")
    leaf(users, "enable", _set_disabled(False), "enable a disabled user").add_argument("name")
    passwd = leaf(users, "passwd", user_passwd, "set a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from standard input "
                        "(default: generate one and show it once)")

    keys = commands.add_parser("key", help="manage API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = leaf(keys, "create", key_create, "create an API key for a user (shown once)")
    create.add_argument("name", help="the user")
    create.add_argument("--label", default="", help="what the key is for")
    leaf(keys, "revoke", key_revoke, "revoke an API key").add_argument("key_id")
    leaf(keys, "list", key_list, "list API keys").add_argument("name", nargs="?", help="only this user's")

    projects = commands.add_parser("project", help="see projects").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(projects, "list", project_list, "list projects").add_argument("--user", help="only this user's")

    admin = commands.add_parser("admin", help="deployment tasks").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    leaf(admin, "bootstrap", admin_bootstrap,
         "create the first admin account if the registry has no user "
         "(RELAY_ADMIN_USER, RELAY_ADMIN_PASSWORD; default: 'admin' with a generated password)")
