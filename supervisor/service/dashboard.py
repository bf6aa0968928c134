"""The dashboard's files: one page and its script and style, shipped in the package.

    GET /                  index.html
    GET /static/{name}     app.js (imports chart.js, forms.js), app.css

These paths need no token (the page asks for it, then sends it as a bearer
header on every API request it makes). Nothing else is served from disk: the
files are a fixed list read once, so no request can name another file. The
page talks only to this origin, loads nothing from elsewhere and runs no
inline script, which the Content-Security-Policy below makes the browser hold
it to: plugin names, log lines and results are shown as text, never as markup.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources

from aiohttp import web

CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
FILES = {
    "/": "index.html",
    "/static/app.js": "app.js",
    "/static/chart.js": "chart.js",
    "/static/forms.js": "forms.js",
    "/static/app.css": "app.css",
}
PATHS = frozenset(FILES)
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded service must not run yesterday's script
}


def add_routes(app: web.Application) -> None:
    folder = resources.files("supervisor.service") / "static"
    for path, name in FILES.items():
        body = (folder / name).read_bytes()
        content_type = CONTENT_TYPES[name[name.rindex("."):]]
        app.router.add_get(path, _serve(body, content_type))


def _serve(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)

    return handler
