"""
relay's in-memory connections behave like TCP where the upload tests need
it: a paused reader gets nothing, a read is at most the reader's buffer
size, a close comes after the bytes written before it, an abort drops what
was not yet delivered.
"""

from __future__ import annotations

from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from relay.testing.pipe import Pipe, settle
from relay.testing.reactor import reactor_for


class Recorder(Protocol):
    def __init__(self) -> None:
        self.reads: list[bytes] = []
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class PipeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = reactor_for(self)
        self.server, self.client = Recorder(), Recorder()
        self.pipe = Pipe(self.server, self.client)

    def settle(self) -> None:
        settle(self.reactor, [self.pipe])

    def test_reads_are_at_most_the_buffer_size(self) -> None:
        self.pipe.server.bufferSize = 1000
        self.pipe.client.write(b"x" * 2500)
        self.settle()
        self.assertEqual([len(r) for r in self.server.reads], [1000, 1000, 500])

    def test_a_paused_reader_gets_nothing_until_it_resumes(self) -> None:
        self.pipe.server.pauseProducing()
        self.pipe.client.write(b"hello")
        self.settle()
        self.assertEqual(self.server.reads, [])
        self.pipe.server.resumeProducing()
        self.settle()
        self.assertEqual(self.server.reads, [b"hello"])

    def test_a_close_comes_after_the_bytes_before_it(self) -> None:
        self.pipe.client.write(b"last words")
        self.pipe.client.loseConnection()
        self.settle()
        self.assertEqual(self.server.reads, [b"last words"])
        self.assertIsNotNone(self.server.lost)
        self.assertIsNotNone(self.client.lost)
        self.assertTrue(self.pipe.closed)

    def test_an_abort_drops_what_was_not_delivered(self) -> None:
        self.pipe.client.write(b"never")
        self.pipe.client.abortConnection()
        self.settle()
        self.assertEqual(self.server.reads, [])
        self.assertIsNotNone(self.server.lost)
        self.assertTrue(self.pipe.closed)

    def test_settling_runs_what_is_due_now_and_no_later(self) -> None:
        ran: list[str] = []
        self.reactor.callLater(0, ran.append, "now")
        later = self.reactor.callLater(1, ran.append, "later")
        self.settle()
        self.assertEqual(ran, ["now"])
        later.cancel()
