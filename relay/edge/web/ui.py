"""
The browser front end: one page (C{web/templates/index.html}), its ES
modules and style (C{web/static/}, C{docs/web.md}), and Uppy's browser
bundle from the npm package that C{web/package.json} locks
(C{web/node_modules/uppy/dist/}).

Only the files named here are served: nothing else under C{web/} (or above
it) can be reached through a URL.

The page names its files under C{/static/v/<version>/}, the version a hash
of their contents when the edge started: a browser keeps them for a year
without asking again (C{immutable}), so a page load on a slow link costs
no round trip for them, and an upgrade changes the version, so nobody runs
an old file with a new page.  The same files answer under C{/static/} too,
revalidated each time (C{no-cache}).  A deployment without the front end's
files (a wheel installed without C{web/}) still serves the API and tus; its
page says where the files were looked for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.static import File

from relay import __version__

log = Logger()

#: The page's own ES modules (no build step: the browser loads each).
MODULES = (
    "app.mjs", "prefetch.mjs", "lib.mjs", "events.mjs", "status.mjs", "uploads.mjs",
    "pages/projects.mjs", "pages/project.mjs", "pages/job-new.mjs", "pages/job.mjs", "pages/account.mjs",
)

#: URL path under /static/ -> (file under the web directory, content type).
STATIC = {
    **{name: (f"static/{name}", "text/javascript; charset=utf-8") for name in MODULES},
    "app.css": ("static/app.css", "text/css; charset=utf-8"),
    "vendor/uppy.min.mjs": ("node_modules/uppy/dist/uppy.min.mjs", "text/javascript; charset=utf-8"),
    "vendor/uppy.min.css": ("node_modules/uppy/dist/uppy.min.css", "text/css; charset=utf-8"),
}

#: The page loads only its own files and talks only to its own edge.
SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'self'; script-src 'self'; connect-src 'self'; "
        b"img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"x-frame-options": b"DENY",
}


class UserInterface:
    """
    Serves the page and its static files from C{web_dir}.
    """

    def __init__(self, web_dir: Path) -> None:
        self.web_dir = web_dir
        missing = [path for path, _ in [("templates/index.html", ""), *STATIC.values()]
                   if not (web_dir / path).is_file()]
        self.available = not missing
        # Read once: the page is the same for everyone; it names the static
        # files under their version.
        index = web_dir / "templates" / "index.html"
        self.version = _version(web_dir) if self.available else "none"
        self._page = (
            index.read_bytes().replace(b'"/static/', f'"/static/v/{self.version}/'.encode())
            if self.available else _fallback(web_dir).encode()
        )
        if missing:
            log.warn(
                "the browser front end is not available: {missing} missing under {web_dir} "
                "(run `make setup`, or set edge.web_dir)",
                missing=", ".join(missing), web_dir=web_dir,
            )

    def routes(self, app: Klein) -> None:
        @app.route("/", methods=["GET", "HEAD"])
        def index(request: IRequest) -> bytes:
            _secure(request)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"cache-control", b"no-cache")
            return self._page

        @app.route("/static/v/<version>/<path:name>", methods=["GET", "HEAD"])
        def versioned(request: IRequest, version: str, name: str) -> IResource | bytes:
            # Another version (a page from before an upgrade): today's file,
            # revalidated.
            return self._file(request, name, immutable=version == self.version)

        @app.route("/static/<path:name>", methods=["GET", "HEAD"])
        def static(request: IRequest, name: str) -> IResource | bytes:
            return self._file(request, name, immutable=False)

    def _file(self, request: IRequest, name: str, immutable: bool) -> IResource | bytes:
        """
        One of the files in L{STATIC}; C{immutable}: named under today's version.
        """
        entry = STATIC.get(name)
        if entry is None or not self.available:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no such file\n"
        path, content_type = entry
        _secure(request)
        # One range at most: twisted.web's multipart ranges hang on many
        # ranges and answer overlapping ones many times over.  Several
        # get the whole file, which RFC 9110 allows.
        ranges = request.getHeader(b"range")
        if ranges is not None and b"," in ranges:
            request.requestHeaders.removeHeader(b"range")
        if immutable:
            request.setHeader(b"cache-control", b"public, max-age=31536000, immutable")
        else:
            # Revalidated each time (Last-Modified), never stale after an upgrade.
            request.setHeader(b"cache-control", b"no-cache")
        resource = File(str(self.web_dir / path), defaultType=content_type)
        resource.type, resource.encoding = content_type, None
        resource.isLeaf = True
        return resource


def _version(web_dir: Path) -> str:
    """
    The static files' version: a hash of their names and contents.
    """
    digest = hashlib.sha256()
    for name, (path, _) in sorted(STATIC.items()):
        digest.update(name.encode() + b"\0" + (web_dir / path).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _secure(request: IRequest) -> None:
    for name, value in SECURITY_HEADERS.items():
        request.setHeader(name, value)


def _fallback(web_dir: Path) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>relay</title></head>
<body><h1>relay edge</h1>
<p>Version {__version__}. The browser front end's files were not found under
<code>{web_dir}</code>; the API and uploads (<code>/files/</code>, tus 1.0) work.
Status: <a href="/healthz">/healthz</a>, <a href="/metrics">/metrics</a>.</p>
</body></html>
"""
