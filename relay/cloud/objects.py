"""
The cloud's side of S3: multipart uploads the edges fill through presigned
URLs.  Only this module holds AWS credentials.

boto3 is blocking, so every call runs on this module's own bounded thread
pool (L{relay.threads.Threads}), never on the reactor.  The client is the
classic one (no CRT, which ignores C{endpoint_url}) with
C{request_checksum_calculation="when_required"}: boto3 >= 1.36 otherwise
adds CRC32 checksums and aws-chunked bodies that several S3-compatible
servers reject.  Integrity is C{Content-MD5} per part, bound into each
presigned URL, and the whole file's sha256 in the object's metadata.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.exceptions
from botocore.config import Config
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from relay.threads import Threads

R = TypeVar("R")

_COMPONENT = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
#: Files up to this size are stored with one PutObject (L{S3Objects.put_file});
#: larger ones in parts, by boto3's transfer manager (its threshold too).
SINGLE_PUT_MAX = 8 << 20
#: The metadata key (x-amz-meta-sha256) holding the whole object's sha256.
SHA256_METADATA = "sha256"


def object_key(project: str, file_id: str) -> str:
    """
    Where a file's bytes live: derived from the project and the file id,
    never from the user's filename.
    """
    for what, value in (("project", project), ("file id", file_id)):
        if not _COMPONENT.match(value):
            raise ValueError(f"invalid {what} for an object key: {value!r}")
    return f"projects/{project}/files/{file_id}"


class ObjectStoreError(Exception):
    """
    S3 refused or failed a request.  C{transient}: worth trying again later
    (5xx, throttling, a network error); otherwise it will fail again.
    """

    def __init__(self, message: str, *, transient: bool, code: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        self.code = code


class NoSuchUpload(ObjectStoreError):
    """
    S3 does not know the multipart upload (completed, aborted or expired).
    """

    def __init__(self, message: str = "no such multipart upload") -> None:
        super().__init__(message, transient=False, code="NoSuchUpload")


@dataclass(frozen=True)
class PartInfo:
    """
    A part S3 holds: C{etag} without quotes (the part's MD5 in hex, for
    parts uploaded without SSE-KMS).
    """

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    content_type: str = ""


class IObjectStore(Interface):
    """
    What the transfer service needs from S3 (L{S3Objects}; the fake is
    L{relay.testing.transfer.FakeObjectStore}).  Every method returns a
    Deferred and fails with L{ObjectStoreError} (L{NoSuchUpload} where it
    says so).
    """

    def create_upload(key: str, metadata: Mapping[str, str], content_type: str) -> Deferred[str]:
        """
        Start a multipart upload; fires with its upload id.
        """

    def presign_parts(
        key: str, upload_id: str, parts: Sequence[tuple[int, str]], expires_in: int
    ) -> Deferred[dict[int, str]]:
        """
        Presigned PUT URLs for C{(part number, base64 MD5)} pairs; each URL
        is valid only with that C{Content-MD5} header.
        """

    def upload_part(key: str, upload_id: str, number: int, data: bytes, md5: str) -> Deferred[str]:
        """
        Store part C{number} (C{data}, whose base64 MD5 is C{md5}, sent as
        C{Content-MD5}) from inside the cloud; fires with its ETag (hex MD5);
        L{NoSuchUpload}.
        """

    def list_parts(key: str, upload_id: str) -> Deferred[list[PartInfo]]:
        """
        Every part S3 holds, in part order (all pages); L{NoSuchUpload}.
        """

    def complete_upload(key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> Deferred[str]:
        """
        Join the C{(number, etag)} parts; fires with the object's ETag;
        L{NoSuchUpload}.
        """

    def head(key: str) -> Deferred[ObjectInfo | None]:
        """
        The object's size, ETag and metadata, or C{None} if it does not exist.
        """

    def abort_upload(key: str, upload_id: str) -> Deferred[None]:
        """
        Give a multipart upload up (its parts are deleted); no error if gone.
        """

    def sha256(key: str) -> Deferred[str]:
        """
        Read the object back and hash it (hex): the deep check.
        """

    def get_file(key: str, path: Path) -> Deferred[tuple[int, str]]:
        """
        Write the object to C{path}; fires with its size and sha256 (hex)
        as read.
        """

    def put_file(path: Path, key: str, content_type: str) -> Deferred[None]:
        """
        Store the file at C{path} as the object C{key} (a job's result).
        """

    def presign_get(key: str, expires_in: int) -> Deferred[str]:
        """
        A presigned GET URL of the object (ranged GETs may use it).
        """

    def delete(key: str) -> Deferred[None]:
        """
        Delete the object; no error if it is gone already.
        """


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)


def load_credentials(path: Path) -> Credentials:
    """
    Read C{access_key_id} and C{secret_access_key} from a TOML file.

    @raise ValueError: one line saying what is wrong (never the secret).
    """
    try:
        with path.open("rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"{path}: cannot read S3 credentials: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    values = []
    for name in ("access_key_id", "secret_access_key"):
        value = table.get(name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{path}: {name}: expected a non-empty string")
        values.append(value)
    return Credentials(*values)


def multipart_etag(md5s: Iterable[bytes]) -> str:
    """
    The ETag S3 gives a multipart object: md5 of the parts' md5s, and "-N".
    """
    digests = list(md5s)
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def md5_hex(md5_base64: str) -> str:
    try:
        return base64.b64decode(md5_base64, validate=True).hex()
    except binascii.Error:
        raise ValueError(f"not a base64 MD5: {md5_base64!r}") from None


def _error(e: Exception, what: str) -> ObjectStoreError:
    if isinstance(e, botocore.exceptions.ClientError):
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchUpload":
            return NoSuchUpload(f"{what}: no such upload")
        transient = status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout")
        return ObjectStoreError(f"{what}: {code or status}: {error.get('Message', '')}",
                                transient=transient, code=code)
    if isinstance(e, botocore.exceptions.BotoCoreError):
        # Connection and read errors, timeouts: the network, not the request.
        return ObjectStoreError(f"{what}: {type(e).__name__}: {e}", transient=True)
    return ObjectStoreError(f"{what}: {type(e).__name__}: {e}", transient=False)


@implementer(IObjectStore)
class S3Objects(Service):
    """
    One bucket, through boto3 on a bounded thread pool.

    @param endpoint_url: the S3 API endpoint the cloud uses (empty: AWS).
    @param presign_endpoint_url: the endpoint the edges reach, signed into
        their URLs (empty: the same); e.g. an S3 Transfer Acceleration
        endpoint, or a test's link emulator in front of the server.
    @param credentials: C{None} for the AWS default chain (instance role).
    @param page_size: ListParts page size (S3's maximum is 1000).
    """

    def __init__(
        self,
        reactor: Any,
        *,
        bucket: str,
        region: str,
        endpoint_url: str = "",
        presign_endpoint_url: str = "",
        addressing_style: str = "auto",
        credentials: Credentials | None = None,
        max_threads: int = 16,
        page_size: int = 1000,
    ) -> None:
        self._reactor = reactor
        self.bucket = bucket
        self._page_size = page_size
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max_threads,
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
        )
        session = boto3.session.Session(
            aws_access_key_id=credentials.access_key_id if credentials else None,
            aws_secret_access_key=credentials.secret_access_key if credentials else None,
            region_name=region,
        )
        self._client = session.client("s3", endpoint_url=endpoint_url or None, config=config)
        self._presigner = session.client(
            "s3", endpoint_url=(presign_endpoint_url or endpoint_url) or None, config=config
        )
        self._threads = Threads(reactor, "s3", max_threads)

    def startService(self) -> None:
        super().startService()
        self._threads.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # Waits for calls in progress; boto3's own timeouts bound them.
        return self._threads.stopService()

    def _call(self, what: str, work: Callable[..., R], *args: Any) -> Deferred[R]:
        def guarded() -> R:
            try:
                return work(*args)
            except ObjectStoreError:
                raise
            except Exception as e:
                raise _error(e, what) from None

        return self._threads.run(guarded)

    # IObjectStore

    def create_upload(self, key: str, metadata: Mapping[str, str], content_type: str) -> Deferred[str]:
        def work() -> str:
            answer = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, Metadata=dict(metadata),
                ContentType=content_type or "application/octet-stream",
            )
            return str(answer["UploadId"])

        return self._call("CreateMultipartUpload", work)

    def presign_parts(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]], expires_in: int
    ) -> Deferred[dict[int, str]]:
        def work() -> dict[int, str]:
            return {
                number: self._presigner.generate_presigned_url(
                    "upload_part",
                    Params={"Bucket": self.bucket, "Key": key, "UploadId": upload_id,
                            "PartNumber": number, "ContentMD5": md5},
                    ExpiresIn=expires_in,
                )
                for number, md5 in parts
            }

        return self._call("presign UploadPart", work)

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes, md5: str) -> Deferred[str]:
        def work() -> str:
            answer = self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                Body=data, ContentMD5=md5, ContentLength=len(data),
            )
            return str(answer["ETag"]).strip('"').lower()

        return self._call("UploadPart", work)

    def list_parts(self, key: str, upload_id: str) -> Deferred[list[PartInfo]]:
        def work() -> list[PartInfo]:
            parts: list[PartInfo] = []
            marker = 0
            while True:
                page = self._client.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MaxParts=self._page_size, PartNumberMarker=marker,
                )
                for part in page.get("Parts", []):
                    parts.append(PartInfo(int(part["PartNumber"]), int(part["Size"]),
                                          str(part["ETag"]).strip('"').lower()))
                if not page.get("IsTruncated"):
                    return parts
                following = int(page.get("NextPartNumberMarker") or 0)
                if following <= marker:
                    raise ObjectStoreError("ListParts: the page marker did not advance", transient=True)
                marker = following

        return self._call("ListParts", work)

    def complete_upload(self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]) -> Deferred[str]:
        def work() -> str:
            answer = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{etag}"'} for n, etag in parts]},
            )
            return str(answer.get("ETag", "")).strip('"').lower()

        return self._call("CompleteMultipartUpload", work)

    def head(self, key: str) -> Deferred[ObjectInfo | None]:
        def work() -> ObjectInfo | None:
            try:
                answer = self._client.head_object(Bucket=self.bucket, Key=key)
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return ObjectInfo(
                int(answer["ContentLength"]),
                str(answer.get("ETag", "")).strip('"').lower(),
                {k.lower(): v for k, v in answer.get("Metadata", {}).items()},
                str(answer.get("ContentType", "")),
            )

        return self._call("HeadObject", work)

    def abort_upload(self, key: str, upload_id: str) -> Deferred[None]:
        def work() -> None:
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise

        return self._call("AbortMultipartUpload", work)

    def sha256(self, key: str) -> Deferred[str]:
        def work() -> str:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            digest = hashlib.sha256()
            try:
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    digest.update(chunk)
            finally:
                body.close()
            return digest.hexdigest()

        return self._call("GetObject", work)

    def get_file(self, key: str, path: Path) -> Deferred[tuple[int, str]]:
        def work() -> tuple[int, str]:
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            digest, size = hashlib.sha256(), 0
            try:
                with open(path, "wb") as out:
                    for chunk in iter(lambda: body.read(1 << 20), b""):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            finally:
                body.close()
            return size, digest.hexdigest()

        return self._call("GetObject", work)

    def put_file(self, path: Path, key: str, content_type: str) -> Deferred[None]:
        def work() -> None:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size <= SINGLE_PUT_MAX:
                    # One request, with its Content-MD5: a job's log and
                    # small results (boto3's transfer manager costs several
                    # times the CPU for these).
                    data = f.read()
                    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
                    self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5,
                                            ContentType=content_type)
                    return
            # Classic transfer path (multipart past 8 MiB); CRT ignores
            # endpoint_url.
            self._client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type})

        return self._call("PutObject", work)

    def presign_get(self, key: str, expires_in: int) -> Deferred[str]:
        def work() -> str:
            return str(
                self._presigner.generate_presigned_url(
                    "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
                )
            )

        return self._call("presign GetObject", work)

    def delete(self, key: str) -> Deferred[None]:
        def work() -> None:
            self._client.delete_object(Bucket=self.bucket, Key=key)

        return self._call("DeleteObject", work)
