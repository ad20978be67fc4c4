"""
Command line for the link emulator (benchmarks, manual experiments)::

    python -m relay.testing.linkemu --listen tcp:9000:interface=127.0.0.1 \\
        --connect tcp:127.0.0.1:5672 --latency-ms 150 --rate-kbps 512 \\
        --aggregate-kbps 8000 --reset-mean-s 20 --stall-mean-s 0

While it runs, SIGUSR1 resets every connection and SIGUSR2 toggles a
link-wide stall. Counters are logged every C{--stats-interval-s}.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, react
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from .emulator import LinkEmulator
from .profile import LinkProfile

log = Logger()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; rates are in kilobits per second, 0 meaning unlimited."""
    parser = argparse.ArgumentParser(
        prog="linkemu",
        description="TCP proxy emulating a slow, lossy long-distance link (loopback use).",
    )
    add = parser.add_argument
    add("--listen", required=True, help="server endpoint, e.g. tcp:9000:interface=127.0.0.1")
    add("--connect", required=True, help="upstream client endpoint, e.g. tcp:127.0.0.1:5672")
    add("--latency-ms", type=float, default=0.0, help="one-way delay, each direction")
    add("--jitter-ms", type=float, default=0.0, help="extra one-way delay, uniform in [0, J]")
    add("--rate-kbps", type=float, default=0.0, help="per-connection cap, each direction")
    add("--aggregate-kbps", type=float, default=0.0, help="whole-link cap, each direction")
    add("--reset-mean-s", type=float, default=0.0, help="mean time between resets (0: none)")
    add("--stall-mean-s", type=float, default=0.0, help="mean time between stalls (0: none)")
    add("--stall-duration-s", type=float, default=5.0, help="length of each random stall")
    add("--buffer-kib", type=int, default=1024, help="queue per connection and direction")
    add("--seed", type=int, default=None, help="seed for reproducible faults")
    add("--stats-interval-s", type=float, default=10.0, help="log counters this often (0: never)")
    add("--verbose", action="store_true", help="log debug messages too")
    return parser


def _kbps(value: float) -> float | None:
    return value * 1000.0 / 8.0 if value > 0 else None


def _mean(value: float) -> float | None:
    return value if value > 0 else None


def profile_from_args(args: argparse.Namespace) -> LinkProfile:
    """The L{LinkProfile} the parsed arguments describe."""
    return LinkProfile(
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        rate_bytes_per_s=_kbps(args.rate_kbps),
        aggregate_bytes_per_s=_kbps(args.aggregate_kbps),
        reset_mean_s=_mean(args.reset_mean_s),
        stall_mean_s=_mean(args.stall_mean_s),
        stall_duration_s=args.stall_duration_s,
        buffer_bytes=args.buffer_kib * 1024,
    )


async def _run(reactor: Any, args: argparse.Namespace) -> None:
    emulator = LinkEmulator(
        reactor,
        listen=args.listen,
        connect=args.connect,
        profile=profile_from_args(args),
        rng=random.Random(args.seed),
    )
    await emulator.start()
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(emulator.stop())
    )

    def toggle_stall() -> None:
        if emulator.link_stalled:
            emulator.resume()
        else:
            emulator.stall_all()

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(emulator.reset_all))
    signal.signal(signal.SIGUSR2, lambda *_: reactor.callFromThread(toggle_stall))

    if args.stats_interval_s > 0:
        stats = LoopingCall(
            lambda: log.info(
                "linkemu {open} open, {counters}",
                open=len(emulator.connections),
                counters=emulator.counters,
            )
        )
        stats.clock = reactor
        stats.start(args.stats_interval_s, now=False)
    # Run until interrupted; the shutdown trigger closes everything.
    await Deferred()


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Parse C{argv} (default: C{sys.argv[1:]}) and run the emulator until interrupted."""
    args = build_parser().parse_args(argv)
    level = LogLevel.debug if args.verbose else LogLevel.info
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr),
        [LogLevelFilterPredicate(defaultLogLevel=level)],
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    react(_run, (args,))
