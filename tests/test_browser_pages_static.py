"""
The page's files as the edge serves them, without a browser: every module
the page imports is one the edge serves (no build step bundles them), none
builds markup from strings, and nothing is fetched from elsewhere.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import treq
from klein import Klein
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.server import Site

from relay.edge.web.ui import MODULES, STATIC, UserInterface

from .conftest import ROOT

WEB = ROOT / "web"
IMPORT = re.compile(r"""(?:^|\n)\s*import\s[^;]*?from\s+['"]([^'"]+)['"]""")
#: import('...') and a module's own URL's neighbours (new URL('...', import.meta.url)).
LATER = re.compile(r"""(?:\bimport\(|new URL\()\s*['"]([^'"]+)['"]|const BUNDLE = ['"]([^'"]+)['"]""")


def test_every_import_of_every_module_is_served() -> None:
    served = set(STATIC)
    for name in MODULES:
        source = (WEB / "static" / name).read_text()
        folder = name.rsplit("/", 1)[0] if "/" in name else ""
        later = [a or b for a, b in LATER.findall(source)]
        for target in IMPORT.findall(source) + later:
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
    assert re.findall(r"<script[^>]*>", page) == [
        '<script type="module" src="/static/prefetch.mjs" async>', '<script type="module" src="/static/app.mjs">']
    # Every module the page imports is preloaded at once (no waterfall of
    # imports); Uppy's bundle and style are not in the page at all: the page
    # draws its data without parsing them (uploads.mjs loads them later).
    preloaded = set(re.findall(r'<link rel="modulepreload" href="/static/([^"]+)">', page))
    assert preloaded == set(MODULES) - {"app.mjs", "prefetch.mjs"}
    assert "vendor/uppy" not in page
    [loaded_later] = [m for m in MODULES if "vendor/uppy.min.mjs" in (WEB / "static" / m).read_text()]
    assert loaded_later == "uploads.mjs"
    uploads = (WEB / "static" / "uploads.mjs").read_text()
    assert not IMPORT.search(uploads.replace("./lib.mjs", "")), "uploads.mjs imports Uppy's bundle only when needed"


def test_each_module_is_there_and_typed_as_javascript() -> None:
    # Served by the running edge in every browser test; here, what the table says.
    interface = UserInterface(WEB)
    assert interface.available
    for name in MODULES:
        path, content_type = STATIC[name]
        assert (WEB / path).is_file(), name
        assert content_type == "text/javascript; charset=utf-8", name


class VersionedFilesTests(TestCase):
    """
    The page and its files from a running listener (loopback), as a browser
    gets them.
    """

    def web_dir(self) -> Path:
        root = Path(self.mktemp())
        for _, (path, _) in [("index", ("templates/index.html", "")), *STATIC.items()]:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(WEB / path, root / path)
        return root

    async def serve(self, web_dir: Path) -> str:
        app = Klein()
        UserInterface(web_dir).routes(app)
        port = reactor.listenTCP(0, Site(app.resource()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def get(self, base: str, path: str) -> tuple[int, str, bytes]:
        answer = await treq.get(base + path, persistent=False)
        body = await answer.content()
        return answer.code, (answer.headers.getRawHeaders("cache-control") or [""])[0], body

    async def test_the_page_names_its_files_under_their_version_and_browsers_keep_them(self) -> None:
        web_dir = self.web_dir()
        base = await self.serve(web_dir)
        code, cache, page = await self.get(base, "/")
        self.assertEqual((code, cache), (200, "no-cache"))
        [version] = set(re.findall(r'"/static/v/([0-9a-f]{16})/', page.decode()))
        self.assertNotIn('"/static/app', page.decode(), "every file named under its version")
        code, cache, body = await self.get(base, f"/static/v/{version}/pages/project.mjs")
        self.assertEqual((code, cache), (200, "public, max-age=31536000, immutable"))
        self.assertEqual(body, (web_dir / "static" / "pages" / "project.mjs").read_bytes())
        # An old page's version, and the plain names: today's file, revalidated.
        self.assertEqual((await self.get(base, "/static/v/0123456789abcdef/app.css"))[:2], (200, "no-cache"))
        self.assertEqual((await self.get(base, "/static/app.css"))[:2], (200, "no-cache"))
        self.assertEqual((await self.get(base, f"/static/v/{version}/nothing.mjs"))[0], 404)
        # A changed file (an upgrade) is another version.
        (web_dir / "static" / "app.css").write_text("body { color: red; }\n")
        again = await self.serve(web_dir)
        [changed] = set(re.findall(r'"/static/v/([0-9a-f]{16})/', (await self.get(again, "/"))[2].decode()))
        self.assertNotEqual(changed, version)
