"""`GET /ui`: the dashboard page, plain HTML, JS and CSS shipped in the package (`ui/`),
served as they are: no build step, nothing fetched from elsewhere.

The page reads the gateway's own endpoints (`/health`, `/api/stats`, `/api/series`,
`/api/recent`, `/api/compare`) every second and switches the mode with `PUT /api/mode`.
"""

from __future__ import annotations

from importlib.resources import files

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page runs only its own script and talks only to its own gateway.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def ui_routes() -> list[Route]:
    package = files("cc_proxy") / "ui"
    pages = {name: (package / name).read_bytes() for name in UI_FILES}

    def serve(name: str) -> Response:
        return Response(pages[name], media_type=UI_FILES[name], headers=SECURITY_HEADERS)

    async def index(request: Request) -> Response:
        return serve("index.html")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in pages:
            raise HTTPException(404)
        return serve(name)

    return [
        Route("/ui", index, methods=["GET"]),
        Route("/ui/", index, methods=["GET"]),
        Route("/ui/{name}", asset, methods=["GET"]),
    ]
