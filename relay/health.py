"""
The health and metrics endpoints both processes serve.

C{GET /healthz} answers JSON: the version, the uptime, and one section per
component that registered one (the link fills C{link}).  It answers 200 when
every section reports C{"ok": true} (or says nothing about it), else 503, so
a load balancer can act on the status alone.  C{GET /metrics} answers the
Prometheus text format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from relay import __version__
from relay.metrics import Metrics

Section = Callable[[], dict[str, Any]]


class Health:
    """
    What C{/healthz} reports: the process's uptime and registered sections.
    """

    def __init__(self, reactor: IReactorTime, role: str, metrics: Metrics) -> None:
        self._reactor = reactor
        self._role = role
        self._started = reactor.seconds()
        self._sections: dict[str, Section] = {}
        self.metrics = metrics
        metrics.gauge("uptime_seconds", "Seconds since the process started.", self.uptime)

    def uptime(self) -> float:
        return round(self._reactor.seconds() - self._started, 3)

    def add_section(self, name: str, section: Section) -> None:
        self._sections[name] = section

    def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "role": self._role,
            "version": __version__,
            "uptime": self.uptime(),
        }
        for name, section in self._sections.items():
            report[name] = section()
        report["ok"] = all(s.get("ok", True) for s in report.values() if isinstance(s, dict))
        return report

    def routes(self, app: Klein) -> None:
        """
        Add C{/healthz} and C{/metrics} to C{app}.
        """

        @app.route("/healthz", methods=["GET", "HEAD"])
        def healthz(request: IRequest) -> bytes:
            report = self.report()
            request.setResponseCode(200 if report["ok"] else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps(report).encode()

        @app.route("/metrics", methods=["GET"])
        def metrics(request: IRequest) -> bytes:
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            return self.metrics.render().encode()
