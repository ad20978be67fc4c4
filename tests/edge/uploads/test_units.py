"""
The plain parts, without sockets: tus header parsing, file name
sanitising, the request body queue, the locks (with a Clock), and the fakes
and sink against their interfaces.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from relay.edge.auth import IAuthenticator, IProjectAccess
from relay.edge.uploads import tus
from relay.edge.uploads.handoff import IUploadSink, StagedUpload
from relay.edge.uploads.locks import UploadLocks
from relay.edge.uploads.store import Upload, UploadState
from relay.testing.auth import FakeAuthenticator, FakeProjectAccess
from relay.testing.transfer import FakeUploadSink
from relay.tus import protocol
from relay.tus.streaming import BodyInterrupted, RequestBody

from .harness import checksum


def test_fakes_and_sink_provide_their_interfaces() -> None:
    assert verifyObject(IAuthenticator, FakeAuthenticator())
    assert verifyObject(IProjectAccess, FakeProjectAccess())
    assert verifyObject(IUploadSink, FakeUploadSink())


def test_the_fake_sink_remembers() -> None:
    sink = FakeUploadSink()
    staged = StagedUpload("u", "u", "alice", "p", "f", "t", 3)
    sink.upload_staged(staged)
    assert sink.staged == {"u": staged}


def test_metadata() -> None:
    assert protocol.parse_metadata("filename d29ybGQ=,empty, type dGV4dA==") == {
        "filename": b"world", "empty": b"", "type": b"text"}
    for bad in ("a b c", "a !!", "a YQ==,a YQ==", ",", "k\u00e9y YQ=="):
        with pytest.raises(protocol.TusError) as e:
            protocol.parse_metadata(bad)
        assert e.value.status == 400


def test_checksum_header() -> None:
    parsed = protocol.parse_checksum(checksum("sha256", b"abc"))
    assert parsed is not None and parsed.algorithm == "sha256"
    assert protocol.parse_checksum(None) is None
    for bad in ("crc32 AAAA", "sha1", "sha1 !!", "md5 YWJj"):
        with pytest.raises(protocol.TusError) as e:
            protocol.parse_checksum(bad)
        assert e.value.status == 400


def test_concat_header() -> None:
    assert protocol.parse_concat(None) == (None, ())
    assert protocol.parse_concat("partial") == ("partial", ())
    assert protocol.parse_concat("final;/files/a http://h/files/b") == ("final", ("/files/a", "http://h/files/b"))
    assert protocol.upload_id_from_url("http://h:1/files/abc", "/files/") == "abc"
    assert protocol.upload_id_from_url("/files/a/b", "/files/") is None
    assert protocol.upload_id_from_url("/other/abc", "/files/") is None
    for bad in ("final;", "whole", "final"):
        with pytest.raises(protocol.TusError):
            protocol.parse_concat(bad)


def test_creation_headers() -> None:
    c = tus.parse_creation("10", None, "filename YQ==", None)
    assert (c.length, c.metadata, c.concat) == (10, {"filename": b"a"}, None)
    assert tus.parse_creation(None, "1", None, None).length is None
    assert tus.parse_creation(None, None, None, "final;/files/x").parts == ("/files/x",)
    for args in (("1", "1", None, None), (None, None, None, None), ("-1", None, None, None),
                 ("1", None, None, "final;/files/x"), ("99999999999999999999", None, None, None)):
        with pytest.raises(protocol.TusError):
            tus.parse_creation(*args)


def test_version() -> None:
    protocol.check_version("1.0.0")
    for bad in (None, "1.0", "0.2.2"):
        with pytest.raises(protocol.TusError) as e:
            protocol.check_version(bad)
        assert e.value.status == 412 and e.value.headers["Tus-Version"] == "1.0.0"


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"report.pdf", "report.pdf"),
        (b"../../etc/passwd", "passwd"),
        (b"C:\\Users\\x\\plan.dwg", "plan.dwg"),
        (b"a\x00b\x1fc\x7f.txt", "abc.txt"),
        (b"\xe2\x80\xaeevil\xe2\x80\xadfdp.exe", "evilfdp.exe"),
        (b"..", "upload"),
        (b"", "upload"),
        (b"  .hidden  ", "hidden"),
        ("\u8bbe\u8ba1\u56fe.dwg".encode(), "\u8bbe\u8ba1\u56fe.dwg"),
        (b"\xff\xfe.bin", "\ufffd\ufffd.bin"),
    ],
)
def test_filename_sanitising(raw: bytes, expected: str) -> None:
    assert tus.sanitise_filename(raw) == expected


def test_long_filenames_keep_their_extension() -> None:
    name = tus.sanitise_filename(("\u6587" * 300 + ".tar.gz").encode())
    assert len(name.encode()) <= 255 and name.endswith(".gz")


def test_progress() -> None:
    u = Upload("i", "o", "p", "f", "t", length=200, offset=50)
    assert u.progress == 0.25
    assert u.replace(state=UploadState.TRANSFERRING, transferred=100).progress == 0.5
    assert u.replace(state=UploadState.IN_CLOUD).progress == 1.0
    assert u.replace(length=None).progress == 0.0


class _Producer:
    def __init__(self) -> None:
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class RequestBodyTests(SynchronousTestCase):
    def test_batches_backpressure_and_end(self) -> None:
        producer = _Producer()
        body = RequestBody(producer, 10, high_water=4)  # type: ignore[arg-type]
        body.deliver(b"ab")
        self.assertFalse(producer.paused)
        body.deliver(b"cd")
        self.assertTrue(producer.paused)
        self.assertEqual(self.successResultOf(body.read()), [b"ab", b"cd"])
        self.assertFalse(producer.paused)
        pending = body.read()
        self.assertNoResult(pending)
        body.deliver(b"e")
        self.assertEqual(self.successResultOf(pending), [b"e"])
        body.finish()
        self.assertEqual(self.successResultOf(body.read()), [])

    def test_interruption_comes_after_every_byte(self) -> None:
        body = RequestBody(None, 10, high_water=100)
        body.deliver(b"abc")
        body.fail(Failure(ConnectionError("gone")))
        self.assertEqual(self.successResultOf(body.read()), [b"abc"])
        self.failureResultOf(body.read(), BodyInterrupted)
        self.assertEqual(body.received, 3)

    def test_discard(self) -> None:
        producer = _Producer()
        body = RequestBody(producer, None, high_water=2)  # type: ignore[arg-type]
        body.deliver(b"abc")
        self.assertTrue(producer.paused)
        body.discard()
        self.assertFalse(producer.paused)
        body.deliver(b"def")
        body.finish()
        self.assertEqual(self.successResultOf(body.read()), [])
        self.assertEqual(body.received, 6)


class LockTests(SynchronousTestCase):
    def acquire(self, locks: UploadLocks, upload_id: str, aborted: list[str], name: str,
                take_over: bool = False):  # type: ignore[no-untyped-def]
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(
            locks.acquire(upload_id, lambda: aborted.append(name), take_over)
        )

    def test_live_holder_keeps_it(self) -> None:
        clock = Clock()
        locks = UploadLocks(clock, stale_after=2, wait=1)
        aborted: list[str] = []
        first = self.successResultOf(self.acquire(locks, "u", aborted, "first"))
        second = self.acquire(locks, "u", aborted, "second")
        self.assertNoResult(second)
        for _ in range(4):
            first.touch(10)
            clock.advance(0.25)
        error = self.failureResultOf(second)
        self.assertEqual(error.value.status, 423)
        self.assertEqual(aborted, [])
        self.assertIs(locks.holder("u"), first)

    def test_released_in_time(self) -> None:
        clock = Clock()
        locks = UploadLocks(clock, stale_after=2, wait=1)
        first = self.successResultOf(self.acquire(locks, "u", [], "first"))
        second = self.acquire(locks, "u", [], "second")
        first.release()
        clock.advance(0.25)
        self.assertIsNot(self.successResultOf(second), first)

    def test_stale_holder_is_aborted_and_replaced(self) -> None:
        clock = Clock()
        locks = UploadLocks(clock, stale_after=2, wait=1)
        aborted: list[str] = []
        first = self.successResultOf(self.acquire(locks, "u", aborted, "first"))
        clock.advance(3)
        second = self.acquire(locks, "u", aborted, "second")
        self.assertEqual(aborted, ["first"])
        self.assertNoResult(second)  # waits for the old request to flush
        first.release()
        lease = self.successResultOf(second)
        self.assertIs(locks.holder("u"), lease)

    def test_holder_that_will_not_stop_gives_423(self) -> None:
        clock = Clock()
        locks = UploadLocks(clock, stale_after=2, wait=1)
        self.successResultOf(self.acquire(locks, "u", [], "first"))
        second = self.acquire(locks, "u", [], "second", take_over=True)
        clock.advance(1.5)
        self.assertEqual(self.failureResultOf(second).value.status, 423)


def test_uploads_config_errors_name_the_key(tmp_path: object) -> None:
    from pathlib import Path

    from relay.config import ConfigError, load
    from relay.edge.config import EdgeConfig

    path = Path(str(tmp_path)) / "edge.toml"
    for table, key in (("max_size = 0", "uploads.max_size"), ("disk_reserve = -1", "uploads.disk_reserve"),
                       ("cors_origins = 'x'", "uploads.cors_origins"), ("nope = 1", "uploads.nope")):
        path.write_text(f"[uploads]\n{table}\n")
        with pytest.raises(ConfigError, match=key):
            load(EdgeConfig, path)
    path.write_text("[uploads]\ncors_origins = ['https://a.example']\nspool_dir = '/srv/spool'\n")
    uploads = load(EdgeConfig, path).uploads
    assert uploads.cors_origins == ("https://a.example",)
    assert str(uploads.spool_dir) == "/srv/spool"
