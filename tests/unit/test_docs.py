"""The docs blueprint: pages reference only local assets, assets are served, /openapi.json works."""

from __future__ import annotations

import gzip
import re
from typing import Any

import msgspec
import pytest
from quart_trio import QuartTrio
from quart_trio.testing import TrioClient

from dtq.net.docs import make_docs_blueprint

DOC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "test", "version": "1"},
    "paths": {},
}

ASSET_URL = re.compile(r'(?:src|href)="([^"]+)"')


@pytest.fixture
def calls() -> list[int]:
    return []


@pytest.fixture
def client(calls: list[int]) -> TrioClient:
    def get_openapi() -> dict[str, Any]:
        calls.append(1)
        return DOC

    app = QuartTrio(__name__)
    app.register_blueprint(make_docs_blueprint(get_openapi, title="Test <API>"))
    client = app.test_client()
    assert isinstance(client, TrioClient)
    return client


async def page_assets(client: TrioClient, path: str) -> tuple[str, list[str]]:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.content_type == "text/html; charset=utf-8"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    body = await response.get_data(as_text=True)
    assert "http://" not in body
    assert "https://" not in body
    assert "cdn" not in body
    return body, ASSET_URL.findall(body)


async def test_swagger_page_uses_local_assets(client: TrioClient) -> None:
    body, urls = await page_assets(client, "/docs")
    assert "Test &lt;API&gt;" in body
    assert 'data-openapi-url="/openapi.json"' in body
    names = [url.split("?")[0] for url in urls]
    assert "/docs/static/swagger-ui-bundle.js" in names
    assert "/docs/static/swagger-ui.css" in names
    assert "/docs/static/swagger-init.js" in names
    assert all(url.startswith("/docs/static/") for url in urls)
    for url in urls:
        assert (await client.get(url)).status_code == 200, url


async def test_redoc_page_uses_local_assets(client: TrioClient) -> None:
    body, urls = await page_assets(client, "/redoc")
    assert '<redoc spec-url="/openapi.json"></redoc>' in body
    assert "/docs/static/redoc.standalone.js?v=2.5.4" in urls
    assert all(url.startswith("/docs/static/") for url in urls)


@pytest.mark.parametrize(
    ("name", "content_type", "marker"),
    [
        ("swagger-ui-bundle.js", "text/javascript; charset=utf-8", b"SwaggerUIBundle"),
        ("swagger-ui.css", "text/css; charset=utf-8", b".swagger-ui"),
        ("redoc.standalone.js", "text/javascript; charset=utf-8", b'"2.5.4"'),
        ("swagger-init.js", "text/javascript; charset=utf-8", b"validatorUrl: null"),
        ("favicon-32x32.png", "image/png", b"\x89PNG"),
    ],
)
async def test_assets_are_served_with_types_and_long_cache(
    client: TrioClient, name: str, content_type: str, marker: bytes
) -> None:
    response = await client.get(f"/docs/static/{name}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == content_type
    assert "max-age=31536000" in response.headers["Cache-Control"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Encoding" not in response.headers
    assert marker in await response.get_data()


async def test_assets_gzip_and_conditional_requests(client: TrioClient) -> None:
    plain = await client.get("/docs/static/swagger-ui.css")
    body = await plain.get_data()
    zipped = await client.get("/docs/static/swagger-ui.css", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(await zipped.get_data(as_text=False)) == body
    assert zipped.headers["ETag"] != plain.headers["ETag"]

    again = await client.get(
        "/docs/static/swagger-ui.css", headers={"If-None-Match": plain.headers["ETag"]}
    )
    assert again.status_code == 304
    assert await again.get_data() == b""


async def test_unknown_assets_are_404(client: TrioClient) -> None:
    for name in ("nope.js", "index.html", "..%2Fdocs.py", "REDOC-LICENSE"):
        assert (await client.get(f"/docs/static/{name}")).status_code == 404, name


async def test_openapi_json_is_served_and_built_once(client: TrioClient, calls: list[int]) -> None:
    first = await client.get("/openapi.json")
    assert first.status_code == 200
    assert first.content_type == "application/json"
    assert msgspec.json.decode(await first.get_data()) == DOC
    second = await client.get("/openapi.json")
    assert await second.get_data() == await first.get_data()
    assert calls == [1]
    cached = await client.get("/openapi.json", headers={"If-None-Match": first.headers["ETag"]})
    assert cached.status_code == 304
