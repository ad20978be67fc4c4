"""amqps: TLS with hostname verification, against a TLS-terminating proxy
in front of the real broker (RabbitMQ here has no TLS listener)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.ssl import Certificate, PrivateCertificate

from relay.link.backoff import Backoff

from ._broker import HOST, PORT, BrokerTestCase, wait_for, within
from ._stallproxy import StallProxy

# Twisted's own TLS setup still hands pyOpenSSL objects to pyOpenSSL.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
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


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    out = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out = (
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            + out
        )
    return out


class TLSTests(BrokerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca = _certificate("relay test CA", "relay test CA", self.ca_key, self.ca_key, ca=True)

    async def _proxy_for(self, hostname: str) -> int:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(hostname, "relay test CA", key, self.ca_key, ca=False)
        proxy = StallProxy((HOST, PORT), tls=PrivateCertificate.loadPEM(_pem(cert, key)).options())
        port = await proxy.start()
        self.addCleanup(proxy.stop)
        return port

    def _service(self, port: int):  # type: ignore[no-untyped-def]
        return self.service(
            f"amqps://guest:guest@localhost:{port}/",
            tls_trust_root=Certificate.loadPEM(_pem(self.ca)),
            backoff=Backoff(reactor, initial=0.05, cap=0.2, jitter="none"),
        )

    async def test_amqps_connects_when_the_name_matches(self) -> None:
        port = await self._proxy_for("localhost")
        service = self._service(port)
        channel = await within(service.whenConnected(), 10)
        queue = self.queue_name("tls")
        await channel.declare_quorum_queue(queue)
        self.assertTrue(service.health.connected)

    async def test_amqps_refuses_a_certificate_for_another_host(self) -> None:
        port = await self._proxy_for("not-the-broker.example")
        service = self._service(port)
        await wait_for(lambda: service.health.last_error is not None, timeout=10)
        self.assertFalse(service.health.connected)
        self.assertIn("DNSMismatch", service.health.last_error or "")
