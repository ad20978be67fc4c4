"""
A link emulator for tests and benchmarks: a Twisted TCP proxy that makes
loopback behave like the slow, lossy link between an edge and the cloud
(latency, jitter, bandwidth caps, resets, silent stalls).

Typical use in a trial test::

    emulator = LinkEmulator(
        reactor,
        listen="tcp:0:interface=127.0.0.1",
        connect=f"tcp:127.0.0.1:{broker_port}",
        profile=LinkProfile(latency_ms=150, rate_bytes_per_s=64_000),
        rng=random.Random(1),
    )
    await emulator.start()
    self.addCleanup(lambda: Deferred.fromCoroutine(emulator.stop()))
    ...  # connect the code under test to f"tcp:127.0.0.1:{emulator.port}"
    emulator.stall_all()  # or reset_all(), update(latency_ms=300), resume()

The command line lives in L{relay.testing.linkemu.cli} (it is the only part
that touches the global reactor): C{python -m relay.testing.linkemu --help}.
"""

from .bucket import SharedBucket, TokenBucket
from .connection import EmulatedConnection
from .delayline import DelayLine
from .emulator import LinkEmulator
from .profile import LinkCounters, LinkProfile

__all__ = [
    "DelayLine",
    "EmulatedConnection",
    "LinkCounters",
    "LinkEmulator",
    "LinkProfile",
    "SharedBucket",
    "TokenBucket",
]
