"""
The transfer stage's configuration keys: checked at startup, one line
naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.cloud.config import CloudConfig
from relay.config import ConfigError, load
from relay.edge.config import EdgeConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    transfer = load(EdgeConfig, write(tmp_path, "")).transfer
    assert (transfer.concurrency, transfer.bandwidth_limit, transfer.stall_timeout) == (16, 0, 45.0)
    s3 = load(CloudConfig, write(tmp_path, "")).s3
    assert (s3.presign_endpoint_url, s3.presign_expiry, s3.verify_readback) == ("", 3600, False)


@pytest.mark.parametrize("table, line, key", [
    ("transfer", "concurrency = 0", "transfer.concurrency"),
    ("transfer", "bandwidth_limit = -1", "transfer.bandwidth_limit"),
    ("transfer", "stall_timeout = 0", "transfer.stall_timeout"),
    ("transfer", "retry_initial = 60.0", "transfer.retry_initial"),
    ("transfer", "tail_copies = 0", "transfer.tail_copies"),
    ("transfer", "aws_secret = 'x'", "transfer.aws_secret"),
])
def test_edge_refuses(tmp_path: Path, table: str, line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(EdgeConfig, write(tmp_path, f"[{table}]\n{line}\n"))


@pytest.mark.parametrize("line, key", [
    ("presign_expiry = 0", "s3.presign_expiry"),
    ("presign_expiry = 604801", "s3.presign_expiry"),
    ("max_threads = 0", "s3.max_threads"),
])
def test_cloud_refuses(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(CloudConfig, write(tmp_path, f"[s3]\n{line}\n"))
