"""
The files ops copy (systemd units, example configurations) stay true to the
code: their command lines parse with the plugins' options.
"""

from __future__ import annotations

import configparser
import shlex

import pytest

from relay.cloud import tap as cloud_tap
from relay.edge import tap as edge_tap

from .conftest import ROOT


@pytest.mark.parametrize("side, tap", [("edge", edge_tap), ("cloud", cloud_tap)])
def test_systemd_unit_command_line_parses(side: str, tap: object) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "etc" / "systemd" / f"relay-{side}.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/twistd")
    assert "-n" in argv
    position = argv.index(f"relay-{side}")
    options = tap.Options()  # type: ignore[attr-defined]
    options.parseOptions(argv[position + 1 :])
    assert options["config"] == f"/etc/relay/{side}.toml"
    assert unit["Service"]["NoNewPrivileges"] == "yes"
    assert unit["Service"]["ProtectSystem"] == "strict"
    assert unit["Service"]["StateDirectory"] == f"relay-{side}"
    assert unit["Service"]["UMask"] == "0077"
    if side == "edge":
        # What the edge checks at start (relay.edge.web.site.ensure_open_files).
        from relay.edge.config import WebSection

        assert int(unit["Service"]["LimitNOFILE"]) >= WebSection().min_open_files
    logger = argv[argv.index("--logger") + 1]
    module, name = logger.rsplit(".", 1)
    assert callable(getattr(__import__(module, fromlist=[name]), name))
