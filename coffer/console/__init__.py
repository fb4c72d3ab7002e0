"""The operator console (``/console``) and the API documentation page (``/docs``) a node serves.

Job: give people a browser view of a running node with nothing to install and nothing fetched
from elsewhere: every file the pages load ships in this package (``static/``), the console's own
script and styles, and Swagger UI (vendored, Apache-2.0, see ``static/swagger-ui/README.txt``).

Method: the console is one page of plain JavaScript that talks to the node's public API with the
API key the user signs in with, exactly as any client does; it holds no privilege of its own, so
roles are enforced by the node (the page only hides the actions a key may not take). The files are
read once, on first use, and served from memory with an ETag; every page is sent with a content
security policy that allows scripts, styles and connections to this origin only.
"""

import hashlib
import mimetypes
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

static_package = "coffer.console"
# Pages load only what this node serves. Swagger UI sets inline styles and uses data: images.
content_security_policy = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_security_headers = {
    "Content-Security-Policy": content_security_policy,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8"}


class _Files:
    """The files under ``static/<folder>``, read on first use: name -> (bytes, etag, content type)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._files: dict[str, tuple[bytes, str, str]] | None = None

    def get(self, name: str) -> tuple[bytes, str, str] | None:
        return self._load().get(name)

    def names(self) -> list[str]:
        return sorted(self._load())

    def _load(self) -> dict[str, tuple[bytes, str, str]]:
        if self._files is None:
            found = {}
            root = resources.files(static_package).joinpath("static", self.folder)
            for entry in root.iterdir():
                if entry.is_file():
                    data = entry.read_bytes()
                    suffix = "." + entry.name.rsplit(".", 1)[-1]
                    kind = _types.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                    if kind.startswith("text/plain"):
                        kind = "text/plain; charset=utf-8"
                    found[entry.name] = (data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"', kind)
            self._files = found
        return self._files


_console = _Files("console")
_swagger = _Files("swagger-ui")


def _serve(files: _Files, name: str, request: Request) -> Response:
    found = files.get(name)
    if found is None:
        return Response(b'{"error": {"code": "INVALID_REQUEST", "message": "no such file"}}', 404, media_type="application/json")
    data, etag, kind = found
    # Revalidated on every load (cheap: 304), so a node's upgrade shows at once.
    headers = {**_security_headers, "ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=kind, headers=headers)


async def console_page(request: Request) -> Response:
    return _serve(_console, "index.html", request)


async def console_asset(request: Request) -> Response:
    return _serve(_console, request.path_params["name"], request)


async def docs_page(request: Request) -> Response:
    return _serve(_console, "docs.html", request)


async def docs_asset(request: Request) -> Response:
    return _serve(_swagger, request.path_params["name"], request)


def routes() -> list[Route]:
    """The pages and their files; no key is needed to load them (the API calls they make need one)."""
    return [
        Route("/console", console_page, methods=["GET", "HEAD"]),
        Route("/console/", console_page, methods=["GET", "HEAD"]),
        Route("/console/assets/{name}", console_asset, methods=["GET", "HEAD"]),
        Route("/docs", docs_page, methods=["GET", "HEAD"]),
        Route("/docs/assets/{name}", docs_asset, methods=["GET", "HEAD"]),
    ]


def asset_names() -> dict[str, list[str]]:
    """Every file each folder serves (for tests and packaging checks)."""
    return {"console": _console.names(), "swagger-ui": _swagger.names()}
