"""
The health and metrics endpoints both processes serve.

C{GET /healthz} answers JSON: the version, the uptime, and one section per
component that registered one (the link fills C{link}, the database
C{database}, the edge's spool C{spool}).  A section that finds its
component unable to do its work says C{"ok": false} and why
(C{"reason"}); C{/healthz} then answers 503, with every such reason in
C{reasons}, so a load balancer can act on the status alone.  Otherwise it
answers 200.  C{GET /metrics} answers the Prometheus text format.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from relay import __version__
from relay.metrics import Metrics

#: A section of the report: its fields, at once or when a check is done.
Section = Callable[[], dict[str, Any] | Awaitable[dict[str, Any]]]


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
        """
        Report C{section()} as C{name}; a section that can be unhealthy
        says C{"ok"} and, when it is false, C{"reason"}.
        """
        self._sections[name] = section

    async def report(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "role": self._role,
            "version": __version__,
            "uptime": self.uptime(),
        }
        reasons: list[str] = []
        for name, section in self._sections.items():
            result = section()
            fields = await result if inspect.isawaitable(result) else result
            report[name] = fields
            if not fields.get("ok", True):
                reasons.append(f"{name}: {fields.get('reason', 'not ok')}")
        report["ok"] = not reasons
        if reasons:
            report["reasons"] = reasons
        return report

    def routes(self, app: Klein) -> None:
        """
        Add C{/healthz} and C{/metrics} to C{app}.
        """

        @app.route("/healthz", methods=["GET", "HEAD"])
        async def healthz(request: IRequest) -> bytes:
            report = await self.report()
            request.setResponseCode(200 if report["ok"] else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps(report).encode()

        @app.route("/metrics", methods=["GET"])
        def metrics(request: IRequest) -> bytes:
            request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
            return self.metrics.render().encode()


class DatabaseHealth:
    """
    The C{database} section: whether a write commits within C{timeout}
    seconds (a full disk, a read-only file system, a lock held elsewhere
    all stop it).  The write touches the schema bookkeeping and changes
    nothing; concurrent requests share one check.
    """

    log = Logger()

    def __init__(self, db: Any, clock: IReactorTime, timeout: float = 2.0) -> None:
        self._db = db
        self._clock = clock
        self._timeout = timeout
        self._waiting: list[Deferred[dict[str, Any]]] = []

    def __call__(self) -> Deferred[dict[str, Any]]:
        waiter: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append(waiter)
        if len(self._waiting) == 1:
            Deferred.fromCoroutine(self._write())
        return waiter

    async def _write(self) -> None:
        started = self._clock.seconds()
        fields: dict[str, Any]
        try:
            await self._db.run(_touch).addTimeout(self._timeout, self._clock)
        except (TimeoutError, DeferredTimeout):
            fields = {"ok": False, "reason": f"no write committed within {self._timeout:g} s"}
        except Exception as e:
            fields = {"ok": False, "reason": f"cannot write: {type(e).__name__}: {e}"}
        else:
            fields = {"ok": True, "write_seconds": round(self._clock.seconds() - started, 3)}
        if not fields["ok"]:
            self.log.warn("health: the database: {reason}", reason=fields["reason"])
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(fields)


def _touch(conn: Any) -> None:
    conn.execute("UPDATE schema_version SET version = version")
