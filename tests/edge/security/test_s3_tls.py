"""
S3 over HTTPS is always verified: the cloud's boto3 client refuses an
S3 endpoint whose certificate it cannot verify (there is no setting that
turns verification off), and says so.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from relay.cloud.objects import Credentials, ObjectStoreError, S3Objects
from tests.edge.security.test_tls import make_certificate


class S3VerificationTests(TestCase):
    timeout = 60

    async def test_an_unverifiable_s3_endpoint_is_refused(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        key, cert = make_certificate(directory)
        site = Site(Resource())
        port = await serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}").listen(site)
        self.addCleanup(port.stopListening)
        objects = S3Objects(reactor, bucket="relay", region="us-east-1",
                            endpoint_url=f"https://localhost:{port.getHost().port}", max_threads=1,
                            credentials=Credentials("test", "test"))  # fmt: skip
        objects.startService()
        self.addCleanup(objects.stopService)
        with self.assertRaises(ObjectStoreError) as refused:
            await objects.create_upload("k", {}, "application/octet-stream")
        self.assertIn("SSL", str(refused.exception))
        self.assertIn("CERTIFICATE_VERIFY_FAILED", str(refused.exception).upper().replace(" ", "_"))
