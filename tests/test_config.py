"""
Configuration: every class of error stops startup with exit status 1 and one
line naming the file and the key; good files and overrides load.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relay.cloud.config import CloudConfig
from relay.config import ConfigError, load
from relay.edge.config import EdgeConfig

from .conftest import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_shipped_defaults_load() -> None:
    edge = load(EdgeConfig, ROOT / "etc" / "edge.toml")
    assert edge.edge.listen == "tcp:8080:interface=127.0.0.1"
    assert edge.link.heartbeat == 10
    cloud = load(CloudConfig, ROOT / "etc" / "cloud.toml")
    assert cloud.cloud.listen == "tcp:8081:interface=127.0.0.1"
    assert cloud.s3.bucket == "relay"


def test_examples_load() -> None:
    """
    The commented production examples are valid configurations too.
    """
    # The TLS listener names key files that exist only on a real server.
    load(EdgeConfig, ROOT / "etc" / "examples" / "edge.toml", {"edge.listen": "tcp:443"})
    load(CloudConfig, ROOT / "etc" / "examples" / "cloud.toml")


def test_overrides_replace_file_values(tmp_path: Path) -> None:
    path = write(tmp_path, '[edge]\nlisten = "tcp:1"\n')
    config = load(EdgeConfig, path, {"edge.listen": "tcp:2:interface=127.0.0.1", "edge.id": None})
    assert config.edge.listen == "tcp:2:interface=127.0.0.1"
    assert config.edge.id == "local"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(EdgeConfig, write(tmp_path, "")) == EdgeConfig()


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(EdgeConfig, write(tmp_path, ""))
    with pytest.raises(AttributeError):
        config.edge.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[edge]\nlisten = "tcp:8080"\nlisen = "x"\n', "edge.lisen: unknown key"),
        ('[edgy]\nid = "x"\n', "edgy: unknown key"),
        ("[edge]\nlisten = 8080\n", "edge.listen: expected a Twisted server endpoint"),
        ('[edge]\nlisten = "bogus:8080"\n', "edge.listen: expected a Twisted server endpoint"),
        ('[edge]\nlisten = "tcp:notaport"\n', "edge.listen: expected a Twisted server endpoint"),
        ('[link]\nheartbeat = "10"\n', "link.heartbeat: expected an integer"),
        ("[link]\nheartbeat = true\n", "link.heartbeat: expected an integer"),
        ("[link]\nheartbeat = 0\n", "link.heartbeat: expected 1 to 600"),
        ('[link]\nurl = "http://x"\n', "link.url: expected an amqp://"),
        ('[log]\nformat = "xml"\n', "log.format: expected one of 'text', 'json'"),
        ('[edge]\nid = "Not Valid"\n', "edge.id: expected lower-case"),
        ('edge = "x"\n', "edge: expected a table"),
        ("[edge\n", "not valid TOML"),
        ("[jobs]\nlog_tail = 100\n", "jobs.log_tail: expected 4096 to"),
        ("[jobs]\ngap_wait = 0\n", "jobs.gap_wait: expected positive seconds"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(EdgeConfig, path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load(EdgeConfig, tmp_path / "absent.toml")


@pytest.mark.parametrize("side", ["edge", "cloud"])
@pytest.mark.parametrize(
    "text, key",
    [
        (None, "no such configuration file"),
        ("[{side}\n", "not valid TOML"),
        ("[{side}]\nsurprise = 1\n", "{side}.surprise: unknown key"),
        ("[{side}]\nlisten = 1\n", "{side}.listen: expected"),
        ('[{side}]\nlisten = "tcp:port"\n', "{side}.listen: expected a Twisted server endpoint"),
    ],
)
def test_startup_stops_with_one_line(
    tmp_path: Path, twistd: list[str], clean_env: dict[str, str], side: str, text: str | None, key: str
) -> None:
    """
    twistd exits with status 1 and prints exactly one line naming the file
    and the key: no traceback.
    """
    path = tmp_path / f"{side}.toml"
    if text is not None:
        path.write_text(text.format(side=side))
    result = subprocess.run(
        [*twistd, f"relay-{side}", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env,
    )
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert str(path) in lines[0]
    assert key.format(side=side) in lines[0]
    assert not (tmp_path / "var").exists()
