"""
The edge's listener as a TLS endpoint string with a certificate generated
for the test: the answers carry HSTS, the session cookie is C{Secure} and
C{__Host-} prefixed, and a client that does not trust the certificate (or
names another host) is refused by its own verification.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.edge.security.world import PASSWORD, SecureEdge


def make_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "edge.key", directory / "edge.crt"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def https_exchange(port: int, request: bytes, ca: Path | None, server_name: str = "localhost") -> bytes:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as s:
            s.sendall(request)
            answer = b""
            while data := s.recv(65536):
                answer += data
            return answer


def headers(answer: bytes) -> list[tuple[str, str]]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in head)]


class TlsListenerTests(TestCase):
    timeout = 60

    async def test_answers_and_cookies_under_tls(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        key, cert = make_certificate(directory)
        edge = SecureEdge(self, listen="ssl:{port}:interface=127.0.0.1:privateKey=" + str(key) + ":certKey=" + str(cert))
        body = json.dumps({"name": "alice", "password": PASSWORD}).encode()
        request = (b"POST /api/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                   b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = await deferToThread(https_exchange, edge.port, request, cert)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer[:200])
        found = dict(headers(answer))
        self.assertEqual(found["strict-transport-security"], "max-age=31536000")
        self.assertEqual(found["x-content-type-options"], "nosniff")
        self.assertEqual(found["server"], "relay")
        cookie = found["set-cookie"]
        self.assertTrue(cookie.startswith("__Host-relay_session="), cookie)
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        self.assertTrue({"secure", "httponly", "path"} <= attributes, cookie)
        self.assertNotIn("domain", attributes)
        # The prefixed cookie is the session under TLS.
        token = cookie.split(";")[0]
        me = await deferToThread(https_exchange, edge.port, (
            f"GET /api/me HTTP/1.1\r\nHost: localhost\r\nCookie: {token}\r\nConnection: close\r\n\r\n").encode(), cert)
        self.assertTrue(me.startswith(b"HTTP/1.1 200"), me[:200])
        # A client that does not trust the certificate, or names another
        # host, refuses the connection.
        with self.assertRaises(ssl.SSLCertVerificationError):
            await deferToThread(https_exchange, edge.port, b"GET /healthz HTTP/1.1\r\n\r\n", None)
        with self.assertRaises(ssl.SSLCertVerificationError):
            await deferToThread(https_exchange, edge.port, b"GET /healthz HTTP/1.1\r\n\r\n", cert, "edge.example")
