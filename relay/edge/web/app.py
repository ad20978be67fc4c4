"""
The edge's web application: the pages and API people and tools use.

Routes read only local state (the replica, the spool), so no page ever waits
on the international link.
"""

from __future__ import annotations

from pathlib import Path

from klein import Klein

from relay.edge.web.ui import UserInterface
from relay.health import Health


class EdgeWeb:
    """
    The edge's Klein application.  Components add their routes to C{app}.
    """

    def __init__(self, health: Health, web_dir: Path) -> None:
        self.app = Klein()
        health.routes(self.app)
        UserInterface(web_dir).routes(self.app)
