"""`GET /` and the interactive documentation: Swagger UI at `/docs`, ReDoc at `/redoc`.

FastAPI's own pages load their scripts and styles from a CDN, so offline (or behind a strict
egress policy) they are blank. These are the same pages (FastAPI's `get_swagger_ui_html` and
`get_redoc_html`, its documented way of self-hosting), pointed at copies of the assets that the
`fastapi-offline` package ships and this service serves itself. The app is created with
`docs_url=None, redoc_url=None` so that FastAPI's CDN pages are not registered beside these.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from taskapi import __version__

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
HEALTH_URL = "/ops/health"

_ASSETS_PACKAGE = "fastapi-offline"
_ASSETS_DIR = Path(str(resources.files("fastapi_offline") / "static"))
# Part of every asset URL, so an upgrade of the package is never hidden by a browser's cache.
_ASSETS_VERSION = metadata.version(_ASSETS_PACKAGE)
_ASSET_CACHE_CONTROL = "public, max-age=86400"


@dataclass(frozen=True)
class _Asset:
    name: str
    media_type: str

    @property
    def path(self) -> str:
        return f"{ASSETS_URL}/{self.name}"

    def url(self, root_path: str) -> str:
        return f"{root_path}{self.path}?v={_ASSETS_VERSION}"


SWAGGER_JS = _Asset("swagger-ui-bundle.js", "text/javascript; charset=utf-8")
SWAGGER_CSS = _Asset("swagger-ui.css", "text/css; charset=utf-8")
REDOC_JS = _Asset("redoc.standalone.js", "text/javascript; charset=utf-8")
FAVICON = _Asset("favicon.png", "image/png")
ASSETS = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)

# The pages may load nothing from another origin: a browser refuses it rather than hang on a CDN.
# Swagger UI starts from an inline script, and both UIs style elements inline; ReDoc runs its
# search index in a worker it creates from a blob.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _root_path(request: Request) -> str:
    """The prefix a reverse proxy serves the app under (`--root-path`), as FastAPI's pages do."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def _openapi_url(request: Request) -> str:
    return _root_path(request) + (request.app.openapi_url or "/openapi.json")


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root_path(request)
    return _with_csp(
        get_swagger_ui_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_js_url=SWAGGER_JS.url(root),
            swagger_css_url=SWAGGER_CSS.url(root),
            swagger_favicon_url=FAVICON.url(root),
            swagger_ui_parameters=request.app.swagger_ui_parameters,
        )
    )


async def swagger_ui_oauth2_redirect(_request: Request) -> HTMLResponse:
    return _with_csp(get_swagger_ui_oauth2_redirect_html())


async def redoc(request: Request) -> HTMLResponse:
    root = _root_path(request)
    return _with_csp(
        get_redoc_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=REDOC_JS.url(root),
            redoc_favicon_url=FAVICON.url(root),
            with_google_fonts=False,
        )
    )


def _asset_endpoint(asset: _Asset) -> Callable[[Request], Awaitable[Response]]:
    async def serve_asset(_request: Request) -> Response:
        return FileResponse(
            _ASSETS_DIR / asset.name,
            media_type=asset.media_type,
            headers={"Cache-Control": _ASSET_CACHE_CONTROL},
        )

    serve_asset.__name__ = f"docs_asset_{asset.name.replace('-', '_').replace('.', '_')}"
    return serve_asset


class ServiceLinks(BaseModel):
    docs: str
    redoc: str
    openapi: str
    health: str


class ServiceIndex(BaseModel):
    name: str
    version: str
    links: ServiceLinks


async def service_index(request: Request) -> Response:
    """Where a person or a client starts: what this is, and where its documentation is."""
    root = _root_path(request)
    index = ServiceIndex(
        name=request.app.title,
        version=__version__,
        links=ServiceLinks(
            docs=root + DOCS_URL,
            redoc=root + REDOC_URL,
            openapi=_openapi_url(request),
            health=root + HEALTH_URL,
        ),
    )
    return JSONResponse(index.model_dump())


def install_docs(app: FastAPI) -> None:
    """Add `/`, the documentation pages and their assets to `app`, created with `docs_url=None`
    and `redoc_url=None`. Like FastAPI's own pages they are plain routes, outside the OpenAPI
    document and the API's dependencies: no authentication, no rate limit."""
    pages: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
        ("/", service_index),
        (DOCS_URL, swagger_ui),
        (OAUTH2_REDIRECT_URL, swagger_ui_oauth2_redirect),
        (REDOC_URL, redoc),
        # One fixed route per file (no path parameter): nothing else can be asked for.
        *((asset.path, _asset_endpoint(asset)) for asset in ASSETS),
    ]
    for path, endpoint in pages:
        app.add_route(path, endpoint, methods=["GET"], include_in_schema=False)
