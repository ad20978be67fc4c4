"""
S3 over HTTPS is always verified: the cloud's boto3 client and the edge's
part uploader (presigned URLs) refuse an endpoint whose certificate they
cannot verify (there is no setting that turns verification off), and say
so.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase
from twisted.web._newclient import RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.client import FileBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import Site

from relay.cloud.objects import Credentials, ObjectStoreError, S3Objects
from relay.edge.transfer.uploader import HTTPPartTarget
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
                            credentials=Credentials("test", "test"))
        objects.startService()
        self.addCleanup(objects.stopService)
        with self.assertRaises(ObjectStoreError) as refused:
            await objects.create_upload("k", {}, "application/octet-stream")
        self.assertIn("SSL", str(refused.exception))
        self.assertIn("CERTIFICATE_VERIFY_FAILED", str(refused.exception).upper().replace(" ", "_"))

    async def test_the_edge_s_part_uploads_verify_too(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        key, cert = make_certificate(directory)
        port = await serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}").listen(Site(Resource()))
        self.addCleanup(port.stopListening)
        target = HTTPPartTarget(reactor, connect_timeout=5)
        self.addCleanup(target.close)
        with self.assertRaises((RequestTransmissionFailed, ResponseNeverReceived)) as refused:
            await target.put(f"https://localhost:{port.getHost().port}/bucket/key?partNumber=1", {},
                             FileBodyProducer(BytesIO(b"part")))
        self.assertIn("certificate verify failed", str(refused.exception.reasons[0].value))  # type: ignore[union-attr]
