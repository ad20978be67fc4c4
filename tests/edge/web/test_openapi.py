"""
The OpenAPI document against the routes the edge really has: the app as
the tap builds it, every C{/api/v1} route documented with its methods, and
nothing documented that is not there; the document itself valid OpenAPI
3.1, served at C{/api/v1/openapi.json}.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from openapi_spec_validator import validate
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from relay.config import load
from relay.edge.config import EdgeConfig
from relay.edge.tap import edge_service
from relay.edge.web import openapi
from tests.edge.web.world import ApiWorld

ROOT = Path(__file__).resolve().parents[3]
#: Methods werkzeug adds by itself (HEAD to every GET route).
IMPLIED = {"HEAD"}


def routed(app: Any) -> dict[str, set[str]]:
    """
    Each C{/api/v1} path of a Klein app, in OpenAPI's syntax, with its methods.
    """
    found: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        found.setdefault(path, set()).update(rule.methods or ())
    return found


def documented() -> dict[str, set[str]]:
    return {
        path: {method.upper() for method in item if method != "parameters"}
        for path, item in openapi.document()["paths"].items()
    }


class DocumentTests(SynchronousTestCase):
    def app(self) -> Any:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        (directory / "edge.toml").write_text(
            f'[edge]\nlisten = "tcp:0:interface=127.0.0.1"\ndata_dir = "{directory / "edge"}"\n'
            f'web_dir = "{ROOT / "web"}"\n[link]\nurl = "amqp://guest:guest@127.0.0.1:1/unused"\n'
        )
        service = edge_service(load(EdgeConfig, directory / "edge.toml"), reactor)
        (listener,) = [s for s in service if hasattr(s, "factory")]
        self.addCleanup(lambda: [s for s in service if type(s).__name__ == "Database"][0].close())
        return listener.factory.resource._app

    def test_every_route_is_documented_and_nothing_else(self) -> None:
        routes, docs = routed(self.app()), documented()
        self.assertGreater(len(routes), 25)
        self.assertEqual(sorted(set(routes) - set(docs)), [], "routes missing from the document")
        self.assertEqual(sorted(set(docs) - set(routes)), [], "documented, but no such route")
        for path in sorted(routes):
            self.assertEqual((path, routes[path] - IMPLIED), (path, docs[path] - IMPLIED))

    def test_the_check_can_fail(self) -> None:
        app = self.app()
        app.route("/api/v1/undocumented", methods=["GET"])(lambda request: b"")
        self.assertIn("/api/v1/undocumented", set(routed(app)) - set(documented()))

    def test_a_valid_openapi_31_document(self) -> None:
        document = openapi.document()
        self.assertEqual(document["openapi"], "3.1.0")
        validate(document)
        # Every operation answers the one error shape by default.
        for path, item in document["paths"].items():
            for method, operation in item.items():
                if method != "parameters":
                    self.assertEqual(operation["responses"]["default"]["content"]["application/json"]["schema"],
                                     {"$ref": "#/components/schemas/Error"}, (path, method))
        self.assertEqual(document["components"]["schemas"]["Error"]["required"], ["error", "code"])


class ServedTests(ApiWorld):
    def test_served_to_anyone(self) -> None:
        code, body = self.request("GET", "/api/v1/openapi.json")
        self.assertEqual(code, 200)
        self.assertEqual(body, json.loads(json.dumps(openapi.document())))
