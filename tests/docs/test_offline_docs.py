"""Swagger UI (`/docs`) and ReDoc (`/redoc`) work with no internet access: every script, style
sheet and icon they reference is served by the service itself, and `GET /` links to them."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest
from fastapi import FastAPI

DOC_PAGES = ("/docs", "/redoc")
EXPECTED_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
}
# What each asset must be: the scripts define the UI they are named for.
ASSET_MARKERS = {
    "swagger-ui-bundle.js": b"SwaggerUIBundle",
    "redoc.standalone.js": b"Redoc",
    "swagger-ui.css": b".swagger-ui",
    "favicon.png": b"\x89PNG\r\n\x1a\n",
}


class _References(HTMLParser):
    """Every URL a page makes the browser load: src and href attributes, ReDoc's spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href", "spec-url"} and value:
                self.urls.append(value)


def references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    # Swagger UI is told where the schema is in its inline script.
    parser.urls += re.findall(r"\burl: '([^']*)'", html)
    return parser.urls


def _package_file(name: str) -> bytes:
    return (resources.files("fastapi_offline") / "static" / name).read_bytes()


@pytest.mark.parametrize("page", DOC_PAGES)
async def test_doc_pages_reference_only_this_service(client: httpx.AsyncClient, page: str) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    urls = references(html)
    assert urls, html
    for url in urls:
        assert url.startswith("/"), f"{page} loads {url}"
        assert not url.startswith("//"), f"{page} loads {url}"
    # No CDN, no Google Fonts, nothing absolute anywhere in the page.
    assert "http://" not in html, html
    assert "https://" not in html, html


@pytest.mark.parametrize("page", DOC_PAGES)
async def test_a_browser_is_told_to_load_nothing_from_elsewhere(
    client: httpx.AsyncClient, page: str
) -> None:
    policy = (await client.get(page)).headers["content-security-policy"]
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert directives["default-src"] == ["'none'"]
    allowed = {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"}
    for name, sources in directives.items():
        assert set(sources) <= allowed, f"{name} allows {sources}"
    assert directives["script-src"][0] == "'self'"
    assert directives["connect-src"] == ["'self'"]  # the schema and "Try it out"


@pytest.mark.parametrize("page", DOC_PAGES)
async def test_every_asset_a_page_references_is_served(
    client: httpx.AsyncClient, page: str
) -> None:
    html = (await client.get(page)).text
    assets = [url for url in references(html) if url.startswith("/docs/assets/")]
    assert len(assets) >= 2, html  # a script and an icon at least
    for url in assets:
        response = await client.get(url)
        assert response.status_code == 200, url
        name = url.split("?")[0].rsplit("/", 1)[1]
        extension = name[name.rindex(".") :]
        assert response.headers["content-type"].startswith(EXPECTED_TYPES[extension]), url
        assert response.content == _package_file(name)
        assert ASSET_MARKERS[name] in response.content
        assert "public" in response.headers["cache-control"]


async def test_the_schema_the_pages_load_is_served(client: httpx.AsyncClient) -> None:
    for page in DOC_PAGES:
        html = (await client.get(page)).text
        (schema_url,) = [url for url in references(html) if url.endswith("openapi.json")]
        schema = await client.get(schema_url)
        assert schema.status_code == 200
        assert schema.json()["info"]["title"] == "taskapi"


async def test_only_the_shipped_assets_can_be_fetched(client: httpx.AsyncClient) -> None:
    for url in ("/docs/assets/core.py", "/docs/assets/../core.py", "/docs/assets/"):
        response = await client.get(url)
        assert response.status_code == 404, url
        assert response.headers["content-type"] == "application/problem+json"


async def test_pages_and_assets_follow_a_proxy_prefix(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app, root_path="/taskapi")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for page in DOC_PAGES:
            html = (await client.get(f"/taskapi{page}")).text
            for url in references(html):
                assert url.startswith("/taskapi/"), f"{page} loads {url}"
        index = (await client.get("/taskapi/")).json()
        assert index["links"]["docs"] == "/taskapi/docs"
        assert index["links"]["openapi"] == "/taskapi/openapi.json"


async def test_root_links_to_the_docs_the_schema_and_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["name"] == "taskapi"
    links = body["links"]
    assert links == {
        "docs": "/docs",
        "redoc": "/redoc",
        "openapi": "/openapi.json",
        "health": "/ops/health",
    }
    expected_types = {
        "docs": "text/html",
        "redoc": "text/html",
        "openapi": "application/json",
        "health": "application/json",
    }
    for name, url in links.items():
        followed = await client.get(url)
        assert followed.status_code == 200, url
        assert followed.headers["content-type"].startswith(expected_types[name]), url
