"""The playground (API.md §4): one static page, its script and its style, shipped in the package.

Everything the page loads comes from here, so its Content-Security-Policy allows this origin only: no inline
script or style, no other host. Its URLs are relative (``playground/app.js``, ``api/claude/...``), so it works
behind a proxy that mounts the gateway under a path prefix.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from ..http import LeanRoute
from ..state import gateway

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# The key input is hidden unless GATEWAY_API_KEYS is set.
KEY_PANEL_HIDDEN = b' id="key-panel" hidden>'
KEY_PANEL_SHOWN = b' id="key-panel">'


@functools.cache
def asset(name: str) -> bytes:
    return (resources.files("llm_gateway") / "playground" / name).read_bytes()


async def page(request: Request) -> Response:
    html = asset("index.html")
    if gateway(request).settings.client_tenants:
        html = html.replace(KEY_PANEL_HIDDEN, KEY_PANEL_SHOWN)
    return Response(html, media_type="text/html", headers=HEADERS)


async def script(request: Request) -> Response:
    return Response(asset("app.js"), media_type="text/javascript", headers=HEADERS)


async def style(request: Request) -> Response:
    return Response(asset("app.css"), media_type="text/css", headers=HEADERS)


PATHS = ("/playground", "/playground/app.js", "/playground/app.css")
routes = [
    LeanRoute(path, endpoint, methods=["GET"], include_in_schema=False)
    for path, endpoint in zip(PATHS, (page, script, style), strict=True)
]
