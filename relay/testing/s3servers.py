"""
Local S3-compatible servers for tests and benchmarks, as subprocesses on
loopback: moto's server mode (faithful multipart and ETags; checks no
digests, no signatures, keeps nothing across its own restarts) and
C{rclone serve s3} (checks SigV4 signatures, URL expiry and C{Content-MD5};
keeps objects in a directory).

    server = start_moto(log_path=tmp / "moto.log")
    try:
        ...  # server.endpoint, server.bucket, server.credentials, server.client()
    finally:
        server.stop()
"""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config

from relay.cloud.objects import Credentials

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"S3 server exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"S3 server did not listen on {port} within {seconds} s")


@dataclass
class S3Server:
    """
    A running server: its endpoint, one bucket and the credentials to use.
    """

    kind: str
    port: int
    bucket: str
    credentials: Credentials
    process: subprocess.Popen[bytes]
    log_path: Path | None = None
    root: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, endpoint: str | None = None, **config: Any) -> Any:
        """
        A boto3 client for this server (or for C{endpoint} in front of it).
        """
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
        options.update(config)
        return boto3.client(
            "s3", endpoint_url=endpoint or self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.credentials.access_key_id,
            aws_secret_access_key=self.credentials.secret_access_key,
            config=Config(**options),
        )

    def write_credentials(self, path: Path) -> Path:
        path.write_text(
            f'access_key_id = "{self.credentials.access_key_id}"\n'
            f'secret_access_key = "{self.credentials.secret_access_key}"\n'
        )
        path.chmod(0o600)
        return path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()


def _log_file(log_path: Path | None) -> IO[bytes] | int:
    return log_path.open("ab") if log_path is not None else subprocess.DEVNULL


def start_moto(bucket: str = "relay-test", log_path: Path | None = None) -> S3Server:
    """
    C{moto_server} on a free loopback port, with C{bucket} created.  Its
    request log (one line per request: method, path and query, status) goes
    to C{log_path}.
    """
    port = free_port()
    log = _log_file(log_path)
    process = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    server = S3Server("moto", port, bucket, Credentials("testing", "testing"), process, log_path,
                      _log=log if not isinstance(log, int) else None)
    try:
        _wait_listening(port, process)
        server.client().create_bucket(Bucket=bucket)
    except BaseException:
        server.stop()
        raise
    return server


def start_rclone(root: Path, bucket: str = "relay-test", log_path: Path | None = None,
                 *extra: str) -> S3Server:
    """
    C{rclone serve s3} on a free loopback port serving directory C{root},
    with generated credentials and C{bucket} created (as a directory).
    Parts are buffered until the upload completes
    (C{--disable-multipart-streaming}): in streaming mode rclone fails a
    whole upload when a part is rejected, and holds at most 256 MiB of
    out-of-order parts.
    """
    port = free_port()
    (root / bucket).mkdir(parents=True, exist_ok=True)
    credentials = Credentials("relay" + secrets.token_hex(4), secrets.token_hex(16))
    log = _log_file(log_path)
    process = subprocess.Popen(
        [str(BIN / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{credentials.access_key_id},{credentials.secret_access_key}",
         "--config", "/dev/null", "--disable-multipart-streaming", *extra, str(root)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    server = S3Server("rclone", port, bucket, credentials, process, log_path, root,
                      _log=log if not isinstance(log, int) else None)
    try:
        _wait_listening(port, process)
    except BaseException:
        server.stop()
        raise
    return server
