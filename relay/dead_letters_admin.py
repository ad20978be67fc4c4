"""
C{relay dead-letters}: see and act on the messages an inbox could not apply.

The command works on the database file directly (no reactor, no broker): a
replay only marks the dead letter, and the running process's inbox applies
it within a second or two.  It serves both sides, so it stands beside the
C{relay} command (L{relay.cli}) rather than in the link layer, which knows
neither side's configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from relay.cloud.config import CloudConfig, database_target
from relay.config import ConfigError, load, relative_to
from relay.db import Database, is_postgresql
from relay.edge.config import EdgeConfig
from relay.link import deadletters, inbox


def database_path(args: argparse.Namespace) -> Path | str:
    """
    The side's database: from C{--db}, or as its configuration file says (a
    file in the data directory, or the cloud's PostgreSQL).
    """
    if args.db:
        return args.db if is_postgresql(args.db) else Path(args.db)
    if args.side == "cloud":
        cloud = load(CloudConfig, args.config or "etc/cloud.toml")
        return database_target(cloud, Path.cwd())
    edge = load(EdgeConfig, args.config or "etc/edge.toml")
    return relative_to(Path.cwd(), edge.edge.data_dir) / "edge.db"


def open_database(args: argparse.Namespace) -> Database:
    path = database_path(args)
    if isinstance(path, Path) and not path.exists():
        raise SystemExit(f"relay: no database at {path}")
    from twisted.internet import reactor

    return Database(reactor, path, [inbox.SCHEMA])  # type: ignore[arg-type]


def run(args: argparse.Namespace) -> int:
    try:
        db = open_database(args)
    except ConfigError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 1
    if args.action == "list":
        rows = db.run_now(deadletters.listing, None if args.all else "dead")
        show(rows, args.json)
        return 0
    if not args.numbers:
        print("relay: name the dead letters by number (see 'relay dead-letters list')", file=sys.stderr)
        return 2
    act = deadletters.request_replay if args.action == "replay" else deadletters.drop
    changed = db.run_now(act, args.numbers)
    verb = "marked for replay" if args.action == "replay" else "dropped"
    if args.json:
        print(json.dumps({"changed": changed}))
    else:
        print(f"{changed} of {len(args.numbers)} dead letters {verb}")
    return 0 if changed == len(args.numbers) else 1


def show(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        print("no dead letters")
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["received"]))
        print(
            f"#{row['number']}  {when}Z  {row['state']:<8} {row['type'] or '?':<20} "
            f"{row['queue']}  {row['size']} B  {row['reason']}"
        )


def add_commands(commands: Any) -> None:
    letters = commands.add_parser(
        "dead-letters", help="list, replay or drop messages an inbox could not apply"
    )
    letters.add_argument("action", choices=["list", "replay", "drop"])
    letters.add_argument("numbers", nargs="*", type=int, help="dead letter numbers (replay, drop)")
    letters.add_argument("--side", choices=["edge", "cloud"], default="edge")
    letters.add_argument("--config", help="the side's configuration file (finds its data directory)")
    letters.add_argument("--db", help="the database itself: a SQLite file or a postgresql:// URL")
    letters.add_argument("--all", action="store_true", help="list replayed and dropped ones too")
    letters.add_argument("--json", action="store_true", help="machine-readable output")
    letters.set_defaults(run=run)
