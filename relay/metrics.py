"""
Metrics in the Prometheus text exposition format (version 0.0.4).

A process has one L{Metrics} registry, built in C{tap.py} and handed to the
components that count things.  Counters are incremented where events
happen; gauges read a current value through a callback when scraped, so
nothing has to keep them up to date.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class Counter:
    """
    A monotonically increasing count, optionally split by labels.
    """

    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)


@dataclass
class Gauge:
    """
    A value read when scraped: C{read} returns a number, or a mapping of
    label dicts (as sorted tuples) to numbers.
    """

    name: str
    help: str
    read: Callable[[], float | Mapping[Labels, float]]


class Metrics:
    """
    A registry of counters and gauges under one name prefix.
    """

    def __init__(self, prefix: str = "relay") -> None:
        self._prefix = prefix
        self._metrics: dict[str, Counter | Gauge] = {}

    def counter(self, name: str, help: str) -> Counter:
        full = f"{self._prefix}_{name}"
        existing = self._metrics.get(full)
        if isinstance(existing, Counter):
            return existing
        counter = self._metrics[full] = Counter(full, help)
        return counter

    def gauge(self, name: str, help: str, read: Callable[[], float | Mapping[Labels, float]]) -> Gauge:
        full = f"{self._prefix}_{name}"
        gauge = self._metrics[full] = Gauge(full, help, read)
        return gauge

    def render(self) -> str:
        lines = []
        for metric in self._metrics.values():
            kind = "counter" if isinstance(metric, Counter) else "gauge"
            lines.append(f"# HELP {metric.name} {_escape(metric.help)}")
            lines.append(f"# TYPE {metric.name} {kind}")
            if isinstance(metric, Counter):
                values: Mapping[Labels, float] = metric.values or {(): 0}
                suffix = "_total"
            else:
                read = metric.read()
                values = read if isinstance(read, Mapping) else {(): read}
                suffix = ""
            for labels, value in values.items():
                lines.append(f"{metric.name}{suffix}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"
