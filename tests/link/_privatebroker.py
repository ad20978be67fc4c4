"""
RabbitMQ nodes of the tests' own on loopback, for what the machine's broker
(127.0.0.1:5672, shared with everything else running tests) must not be
put through: a TLS listener (the amqps tests; the machine's broker has
none, and the tests must not reconfigure a broker others share) and a
restart (the link's exactly-once tests; stopping the shared broker would
cut every other test's connections).

A node runs from the installed RabbitMQ with its own node name, ports,
database, logs and configuration under a temporary directory; its one
listener is plain AMQP or TLS (with a certificate for C{localhost} signed
by a test CA made here); its only vhost is the tests' own (L{VHOST}).  It
takes about ten seconds to start, so a test class starts one in
C{setUpClass}.
"""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

VHOST = "relay-test-private"

_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def certificate(
    subject: str,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    """A certificate for C{subject} (a CA's, or a server's naming it as its DNS name)."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_ca(name: str = "relay test CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return certificate(name, name, key, key, ca=True), key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateBroker:
    """
    A private RabbitMQ node whose one listener is on loopback: amqps if
    C{tls}, else plain amqp.

    @ivar ca_pem: the test CA that signed the broker's certificate (TLS
        only; else C{None}).
    @ivar port: the listener's port.
    """

    def __init__(self, tls: bool = False) -> None:
        if not _SERVER.exists():
            raise RuntimeError(f"{_SERVER} is missing: install RabbitMQ (make test does)")
        self.tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix="relay-private-broker-"))
        self.port = _free_port()
        self.ca_pem: bytes | None = None
        if tls:
            ca, ca_key = new_ca()
            key = ec.generate_private_key(ec.SECP256R1())
            server = certificate("localhost", "relay test CA", key, ca_key, ca=False)
            self.ca_pem = pem(ca)
            (self._dir / "ca.pem").write_bytes(self.ca_pem)
            (self._dir / "server.pem").write_bytes(pem(server))
            (self._dir / "server.key").write_bytes(key_pem(key))
            listeners = (
                "listeners.tcp = none\n"
                f"listeners.ssl.default = 127.0.0.1:{self.port}\n"
                f"ssl_options.cacertfile = {self._dir / 'ca.pem'}\n"
                f"ssl_options.certfile = {self._dir / 'server.pem'}\n"
                f"ssl_options.keyfile = {self._dir / 'server.key'}\n"
                "ssl_options.verify = verify_none\n"
            )
        else:
            listeners = f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
        (self._dir / "rabbitmq.conf").write_text(listeners + f"default_vhost = {VHOST}\n")
        (self._dir / "plugins").write_text("[].\n")
        (self._dir / "home").mkdir()
        # The same name and database across a restart: what it held survives.
        self._node = f"relay-private-{os.getpid()}-{self.port}@localhost"
        self._dist_port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, host: str = "localhost") -> str:
        return f"{'amqps' if self.tls else 'amqp'}://guest:guest@{host}:{self.port}/{VHOST}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the node and wait until its listener answers (a TLS handshake, if TLS)."""
        env = {
            **os.environ,
            "HOME": str(self._dir / "home"),
            "RABBITMQ_NODENAME": self._node,
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_MNESIA_BASE": str(self._dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self._dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self._dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self._dir / "plugins"),
            "RABBITMQ_PID_FILE": str(self._dir / "pid"),
        }
        with open(self._dir / "server.out", "ab") as out:
            self._process = subprocess.Popen(
                [str(_SERVER)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        context = ssl.create_default_context(cadata=self.ca_pem.decode()) if self.ca_pem else None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"the private broker exited: {self._output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as raw:
                    if context is not None:
                        with context.wrap_socket(raw, server_hostname="localhost"):
                            return
                    return
            except OSError:
                if time.monotonic() > deadline:
                    output = self._output()
                    self.stop()
                    raise RuntimeError(f"the private broker did not listen within {timeout}s: {output}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the node (all of its process group) and remove its files."""
        self.halt()
        shutil.rmtree(self._dir, ignore_errors=True)

    def halt(self) -> None:
        """Stop the node, keeping what it holds for the next L{start}."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None

    def _output(self) -> str:
        path = self._dir / "server.out"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


class WithTLSBroker:
    """
    A test case mix-in: one TLS L{PrivateBroker} for the whole class
    (C{broker}), and CA files written for a test (L{ca_file}).
    """

    broker: PrivateBroker

    @classmethod
    def setUpClass(cls) -> None:
        cls.broker = PrivateBroker(tls=True)
        cls.broker.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.broker.stop()

    def ca_file(self, content: bytes) -> Path:
        path = Path(self.mktemp())  # type: ignore[attr-defined]
        path.write_bytes(content)
        return path.absolute()
