"""
The C{relay} command: administration from a shell.

Subcommands arrive with the components they administer; each one is a
function taking parsed arguments and returning an exit status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relay import __version__, dead_letters_admin
from relay.cloud import admin as registry_admin
from relay.cloud.config import CloudConfig
from relay.config import ConfigError, load
from relay.edge import spool_admin
from relay.edge.config import EdgeConfig


def check_config(args: argparse.Namespace) -> int:
    """
    Read a configuration file the way the process would and say whether it
    is valid.
    """
    kind = CloudConfig if args.side == "cloud" else EdgeConfig
    try:
        load(kind, args.path)
    except ConfigError as e:
        print(f"relay: {e}", file=sys.stderr)
        return 1
    print(f"{args.path}: valid {args.side} configuration")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="relay", description="Administer a relay deployment.")
    top.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("side", choices=["edge", "cloud"])
    check.add_argument("path")
    check.set_defaults(run=check_config)

    dead_letters_admin.add_commands(commands)
    registry_admin.add_commands(commands)
    spool_admin.add_commands(commands)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
