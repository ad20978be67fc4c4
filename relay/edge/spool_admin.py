"""
C{relay spool rotate-key}: replace the edge's spool master key without
losing a byte of what the spool holds (unfinished and staged uploads).

Run it with the edge stopped.  It writes a new key next to the old one
(C{<master_key>.new}, 0600), rewraps every spool file's key with it (each
record replaced atomically; the data is never rewritten), then moves the
new key into place.  Interrupted anywhere, it can be run again and
finishes; until it has, the edge refuses to start (it would hold key
records its key cannot open).  Back the new key up apart from the spool.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from relay.config import ConfigError, config_path, load, relative_to
from relay.crypto import MasterKeyError, fsync_directory, load_or_create_master_key
from relay.edge.config import EdgeConfig
from relay.edge.uploads.spool import Spool, SpoolError

DEFAULT_CONFIG = "etc/edge.toml"


def pending_rotation(key_path: Path) -> Path:
    """Where an unfinished rotation keeps its new key."""
    return key_path.with_name(key_path.name + ".new")


def spool_paths(config: EdgeConfig, cwd: Path) -> tuple[Path, Path]:
    data_dir = relative_to(cwd, config.edge.data_dir)
    spool_dir = relative_to(data_dir, config.uploads.spool_dir or Path("spool"))
    key_path = relative_to(data_dir, config.uploads.master_key or Path("spool.key"))
    return spool_dir, key_path


def rotate(spool_dir: Path, key_path: Path) -> int:
    """
    Rotate the master key at C{key_path} for the spool in C{spool_dir}.
    Returns the number of key records rewrapped by this run.
    """
    old = load_or_create_master_key(key_path, outside=spool_dir)
    new = load_or_create_master_key(pending_rotation(key_path), outside=spool_dir)
    done = Spool(spool_dir, old).rewrap(new)
    os.replace(pending_rotation(key_path), key_path)
    fsync_directory(key_path.parent)
    return done


def rotate_key(args: argparse.Namespace) -> int:
    try:
        config = load(EdgeConfig, config_path(args.config, DEFAULT_CONFIG))
    except ConfigError as e:
        print(f"relay: {e}")
        return 1
    spool_dir, key_path = spool_paths(config, Path.cwd())
    try:
        done = rotate(spool_dir, key_path)
    except (MasterKeyError, SpoolError, OSError) as e:
        print(f"relay: the rotation did not finish ({e}); fix that and run it again")
        return 1
    print(f"rotated the spool master key {key_path}: {done} spool files rewrapped; back the new key up")
    return 0


def add_commands(commands: Any) -> None:
    spool = commands.add_parser("spool", help="the edge's encrypted upload spool")
    sub = spool.add_subparsers(dest="spool_command", required=True, metavar="COMMAND")
    rotate_parser = sub.add_parser("rotate-key", help="replace the spool's master key (edge stopped)")
    rotate_parser.add_argument("--config", "-c", default=None, help=f"edge configuration [{DEFAULT_CONFIG}]")
    rotate_parser.set_defaults(run=rotate_key)
