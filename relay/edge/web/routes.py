"""
Where the API's routes live: C{/api/v1/...}, the names to use, and for one
release the same routes under their old C{/api/...} names, which answer the
same and say they are deprecated (C{Deprecation: true} and a C{Link} to
the successor, RFC 9745 / RFC 8594).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from klein import Klein
from twisted.web.iweb import IRequest

V1 = "/api/v1"
LEGACY = "/api"

F = TypeVar("F", bound=Callable[..., Any])


def api_route(
    app: Klein, path: str, methods: Sequence[str], *, legacy: bool = True, current: bool = True
) -> Callable[[F], F]:
    """
    Register a route at C{/api/v1<path>} and, unless C{legacy} is false, at
    its deprecated C{/api<path>} name.  C{current=False} registers only the
    old name (where C{/api/v1} answers differently, from another route).

    @param path: the part after the version, starting with C{/}
        (werkzeug's syntax for variable parts).
    """

    def decorate(route: F) -> F:
        name = f"{route.__name__} {'/'.join(methods)} {path}"
        if current:
            app.route(V1 + path, methods=list(methods), endpoint=f"v1 {name}")(route)
        if legacy:

            @functools.wraps(route)
            def deprecated(request: IRequest, *args: Any, **kwargs: Any) -> Any:
                successor = V1.encode() + (request.path or b"")[len(LEGACY):]
                request.setHeader(b"deprecation", b"true")
                request.setHeader(b"link", b'<' + successor + b'>; rel="successor-version"')
                return route(request, *args, **kwargs)

            app.route(LEGACY + path, methods=list(methods), endpoint=f"legacy {name}")(deprecated)
        return route

    return decorate
