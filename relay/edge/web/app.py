"""
The edge's web application: the pages and API people and tools use.

Routes read only local state (the replica, the spool), so no page ever waits
on the international link.
"""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from relay import __version__
from relay.health import Health


class EdgeWeb:
    """
    The edge's Klein application.  Components add their routes to C{app}.
    """

    def __init__(self, health: Health) -> None:
        self.app = Klein()
        health.routes(self.app)

        @self.app.route("/", methods=["GET"])
        def index(request: IRequest) -> bytes:
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return _INDEX.encode()


_INDEX = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>relay</title></head>
<body><h1>relay edge</h1>
<p>Version {__version__}. Uploads: <code>/files/</code> (tus 1.0).
Status: <a href="/healthz">/healthz</a>, <a href="/metrics">/metrics</a>.</p>
</body></html>
"""
