"""
The page's files as the edge serves them, without a browser: every module
the page imports is one the edge serves (no build step bundles them), none
builds markup from strings, and nothing is fetched from elsewhere.
"""

from __future__ import annotations

import re

from relay.edge.web.ui import MODULES, STATIC, UserInterface

from .conftest import ROOT

WEB = ROOT / "web"
IMPORT = re.compile(r"""(?:^|\n)\s*import\s[^;]*?from\s+['"]([^'"]+)['"]""")


def test_every_import_of_every_module_is_served() -> None:
    served = set(STATIC)
    for name in MODULES:
        source = (WEB / "static" / name).read_text()
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        for target in IMPORT.findall(source):
            assert target.startswith("./") or target.startswith("../"), (name, target)
            parts = [p for p in (folder.split("/") if folder else [])]
            for part in target.split("/"):
                if part == "..":
                    parts.pop()
                elif part != ".":
                    parts.append(part)
            assert "/".join(parts) in served, f"{name} imports {target}, which the edge does not serve"
    # And every module file there is listed (an unlisted one would 404 in the browser).
    on_disk = {str(p.relative_to(WEB / "static")) for p in (WEB / "static").rglob("*.mjs")}
    assert on_disk == set(MODULES)


def test_no_module_builds_markup_from_strings_or_reaches_elsewhere() -> None:
    for name in MODULES:
        lines = (WEB / "static" / name).read_text().splitlines()
        source = "\n".join(line for line in lines if not line.lstrip().startswith(("//", "*", "/*")))
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "http://",
                          "https://"):
            assert forbidden not in source, (name, forbidden)
    page = (WEB / "templates" / "index.html").read_text()
    assert "<script>" not in page and "http" not in page.replace('lang="en"', "")
    assert re.findall(r"<script[^>]*>", page) == ['<script type="module" src="/static/app.mjs">']
    # Every module the page imports is preloaded at once (no waterfall of imports).
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/([^"]+)">', page))
    assert preloaded == {*MODULES, "vendor/uppy.min.mjs"} - {"app.mjs"}


def test_each_module_is_there_and_typed_as_javascript() -> None:
    # Served by the running edge in every browser test; here, what the table says.
    interface = UserInterface(WEB)
    assert interface.available
    for name in MODULES:
        path, content_type = STATIC[name]
        assert (WEB / path).is_file(), name
        assert content_type == "text/javascript; charset=utf-8", name
