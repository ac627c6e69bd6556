"""The browser side: the dashboard at `/`, the branch app at `/branch`, files under `/static/`.

The files live in `api/static/` and ship inside the wheel with the package.
Every response here is public (api/auth.py lets `/`, `/branch` and `/static/…`
through): the pages hold no data; they ask for a token and call the API with it.

Headers, and why:

- `Cache-Control: no-cache`: the files have no content hash in their names, so a
  browser must revalidate each use; the ETag that FileResponse sets makes that a
  304 without a body. A new release is picked up at once.
- A Content-Security-Policy that allows only this origin: no inline script or
  style, no other host, no framing. The pages are written for it (no inline
  handlers, no `style=` attributes).
- `Service-Worker-Allowed` on the branch app's service worker, so the worker
  served from `/static/` may control `/branch` (docs/browser.md: reloading offline).
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
SERVICE_WORKER = "sw.js"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# check_dir=False: a missing folder is a packaging bug that the tests catch by
# fetching the files; failing at import would take the whole API down with it.
_files = StaticFiles(directory=STATIC_DIR, check_dir=False)


async def _serve(name: str, request: Request) -> Response:
    response = await _files.get_response(name, request.scope)
    response.headers.update(HEADERS)
    if name == SERVICE_WORKER:
        # The worker lives in /static/ but controls /branch (it registers for that scope).
        response.headers["Service-Worker-Allowed"] = "/"
    return response


async def dashboard(request: Request) -> Response:
    """`GET /`: the dashboard."""
    return await _serve("index.html", request)


async def branch_app(request: Request) -> Response:
    """`GET /branch`: the branch app."""
    return await _serve("branch.html", request)


async def static_file(request: Request) -> Response:
    """`GET /static/<path>`: a file of `api/static/`; 404 for anything else."""
    name = posixpath.normpath(request.path_params["path"])
    # StaticFiles also refuses to leave its folder; this keeps `..` out of the
    # lookup altogether and makes the refusal a plain 404.
    if name.startswith(("..", "/")) or name == ".":
        raise HTTPException(404)
    return await _serve(name, request)


def web_routes() -> list[Route]:
    """The page and static-file routes (plain Routes, so request metrics name them)."""
    return [
        Route("/", dashboard, methods=["GET", "HEAD"]),
        Route("/branch", branch_app, methods=["GET", "HEAD"]),
        Route("/static/{path:path}", static_file, methods=["GET", "HEAD"]),
    ]
