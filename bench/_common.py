"""
What relay's benchmarks share: a measured result, the comparison table (each
row's rate against the baseline's on the same link), and target checks.

Pure functions of their inputs, no I/O: the benchmark scripts print what
these return.  Running this file does nothing (``make bench`` runs every
``bench/*.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """
    One measured row.

    @ivar scenario: the link it ran on ("loopback", "300 ms RTT", ...);
        ratios compare rows of the same scenario only.
    @ivar system: what moved the messages ("relay", "Shovel").
    @ivar measured: what "done" meant ("edge confirmed", "cloud applied", ...).
    @ivar seconds: wall-clock time until done, or C{None} if it never was.
    @ivar loss: messages that never arrived (C{None}: not checked).
    @ivar duplicates: messages that arrived (or were applied) more than once.
    """

    scenario: str
    system: str
    measured: str
    messages: int
    seconds: float | None
    loss: int | None
    duplicates: int | None
    notes: str = ""

    @property
    def rate(self) -> float | None:
        if self.seconds is None or self.seconds <= 0:
            return None
        return self.messages / self.seconds


def baseline_rate(results: Sequence[Result], scenario: str, system: str) -> float | None:
    """
    The rate of C{system}'s (first) row in C{scenario}, if it finished.
    """
    for result in results:
        if result.scenario == scenario and result.system == system:
            return result.rate
    return None


def ratio(result: Result, results: Sequence[Result], baseline: str) -> float | None:
    """
    C{result}'s rate divided by the baseline's on the same link.
    """
    base = baseline_rate(results, result.scenario, baseline)
    if base is None or result.rate is None or result.system == baseline:
        return None
    return result.rate / base


def _cell(value: object, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(results: Sequence[Result], baseline: str) -> str:
    """
    The results as a fixed-width text table; the ratio column compares each
    row with C{baseline}'s row of the same scenario.
    """
    header = (
        "scenario", "system", "done when", "messages", "seconds", "msg/s",
        f"vs {baseline}", "loss", "duplicates", "notes",
    )
    rows = [header]
    for r in results:
        x = ratio(r, results, baseline)
        rows.append((
            r.scenario, r.system, r.measured, _cell(r.messages),
            _cell(r.seconds, 2) if r.seconds is not None else "not done",
            _cell(r.rate), "-" if x is None else f"{x:.2f}x",
            _cell(r.loss), _cell(r.duplicates), r.notes,
        ))
    numeric = {3, 4, 5, 6, 7, 8}
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass(frozen=True)
class Target:
    """
    A stated goal and whether a run met it (C{None}: not measured).
    """

    goal: str
    met: bool | None
    detail: str

    def line(self) -> str:
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[self.met]
        return f"  [{verdict:^12}] {self.goal}: {self.detail}"


def at_least(goal: str, value: float | None, floor: float | None, unit: str = "msg/s") -> Target:
    """
    The target C{value >= floor}.
    """
    if value is None or floor is None:
        return Target(goal, None, "no finished measurement")
    return Target(goal, value >= floor, f"{value:,.0f} {unit} (need >= {floor:,.0f})")


def format_targets(targets: Sequence[Target]) -> str:
    return "\n".join(target.line() for target in targets)


def http_request(
    port: int, method: str, path: str, headers: dict[str, str], length: int,
    send_body: Callable[[socket.socket], None] | None = None,
) -> tuple[int, dict[str, str]]:
    """
    One HTTP/1.1 request on a fresh loopback connection, written by hand so
    that the client costs as little as possible: the head, then
    C{send_body(sock)} for the C{length} bytes of body.  Returns the status
    and the reply's headers (lower-case names); the reply's body is not read.
    """
    with socket.create_connection(("127.0.0.1", port)) as s:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
                 f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items())]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        if send_body is not None:
            send_body(s)
        reply = b""
        while b"\r\n\r\n" not in reply:
            more = s.recv(65536)
            if not more:
                break
            reply += more
    head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    found = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(head[0].split()[1]), found
