"""Interactive API docs that work offline: Swagger UI at /docs, ReDoc at /redoc, /openapi.json.

Both pages load their scripts and styles from this blueprint (``/docs/static/<name>``), never from
a CDN, so they render on an air-gapped host. Where the files come from:

- Swagger UI: the `swagger-ui-bundle-v2` distribution (module `swagger_ui_bundle`), whose
  `swagger_ui_path` points at its `vendor/swagger-ui-<version>/` directory;
- ReDoc: `dtq/net/static/redoc.standalone.js`, vendored from the npm package ``redoc@2.5.4``
  (MIT, see `REDOC-LICENSE` and `redoc.standalone.js.LICENSE.txt` next to it). ReDoc 3.x ships
  an ES module that renders a blank page from a plain ``<script src>``, hence 2.x;
- `dtq/net/static/swagger-init.js`: our Swagger UI start-up script (no inline scripts, so the
  pages carry a strict Content-Security-Policy).

Assets are read (and gzipped) once, in a worker thread, on first use; they are served with an
ETag and a year-long cache lifetime, their URLs carrying a version so an upgrade is fetched anew.
Responses are made with `current_app.response_class`: a bare `quart.Response` fails under
quart-trio.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import msgspec
import swagger_ui_bundle
import trio
from quart import Blueprint, abort, current_app, request, url_for
from quart.typing import ResponseReturnValue

__all__ = ["REDOC_VERSION", "encode_openapi", "make_docs_blueprint"]

REDOC_VERSION = "2.5.4"
ASSET_MAX_AGE_S = 365 * 24 * 3600

_STATIC_DIR = Path(__file__).resolve().parent / "static"

_CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".png": "image/png",
}
_COMPRESSIBLE = frozenset({".js", ".css", ".map"})

# Scripts only from our own origin and no inline ones; inline styles and data: images because
# both UIs use them; blob: workers for ReDoc's search.
_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "worker-src 'self' blob:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
        "form-action 'self'",
    ]
)


def _swagger_ui_dir() -> Traversable:
    """The installed Swagger UI distribution directory (``.../vendor/swagger-ui-<version>``)."""
    path: Traversable | None = getattr(swagger_ui_bundle, "swagger_ui_path", None)
    if path is not None and path.is_dir():
        return path
    from importlib.resources import files

    vendor = files("swagger_ui_bundle") / "vendor"
    candidates = sorted(
        (p for p in vendor.iterdir() if p.is_dir() and p.name.startswith("swagger-ui-")),
        key=lambda p: p.name,
    )
    if not candidates:
        raise RuntimeError("swagger-ui-bundle-v2 is installed without its Swagger UI files")
    return candidates[-1]


def _version_of(dist_dir: Traversable) -> str:
    match = re.fullmatch(r"swagger-ui-(.+)", dist_dir.name)
    return match.group(1) if match else "unknown"


@dataclass(frozen=True)
class _Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def _load_asset(source: Traversable) -> _Asset:
    body = source.read_bytes()
    suffix = Path(source.name).suffix
    gzipped = gzip.compress(body, compresslevel=6, mtime=0) if suffix in _COMPRESSIBLE else None
    return _Asset(body, gzipped, _CONTENT_TYPES[suffix], _etag(body))


def _etag(body: bytes) -> str:
    """An (unquoted) entity tag for `body`."""
    return hashlib.sha256(body).hexdigest()[:32]


def encode_openapi(doc: Mapping[str, Any]) -> bytes:
    """The document as JSON bytes (as served at /openapi.json and printed by `dtq openapi`)."""
    return msgspec.json.encode(doc)


def make_docs_blueprint(
    get_openapi: Callable[[], Mapping[str, Any]],
    *,
    title: str = "dtq API",
    name: str = "docs",
) -> Blueprint:
    """A blueprint serving /docs, /redoc, /docs/static/<name> and /openapi.json.

    `get_openapi` is called once, on the first request for /openapi.json; the encoded bytes are
    kept for the life of the blueprint.
    """
    bp = Blueprint(name, __name__)
    swagger_dir = _swagger_ui_dir()
    swagger_version = _version_of(swagger_dir)
    init_js = _STATIC_DIR / "swagger-init.js"
    init_version = hashlib.sha256(init_js.read_bytes()).hexdigest()[:12]

    # URL name -> (file, version used to bust caches). Nothing outside this table is served.
    sources: dict[str, tuple[Traversable, str]] = {
        asset: (swagger_dir / asset, swagger_version)
        for asset in (
            "swagger-ui-bundle.js",
            "swagger-ui-bundle.js.map",
            "swagger-ui.css",
            "swagger-ui.css.map",
            "favicon-32x32.png",
            "favicon-16x16.png",
        )
    }
    sources["redoc.standalone.js"] = (_STATIC_DIR / "redoc.standalone.js", REDOC_VERSION)
    sources["swagger-init.js"] = (init_js, init_version)
    loaded: dict[str, _Asset] = {}
    openapi_cache: list[tuple[bytes, str]] = []

    def asset_url(asset: str) -> str:
        return url_for(f"{name}.asset", filename=asset, v=sources[asset][1])

    def page(body: str) -> ResponseReturnValue:
        response = current_app.response_class(body, content_type="text/html; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @bp.get("/docs")
    async def swagger_ui() -> ResponseReturnValue:
        return page(
            _SWAGGER_PAGE.format(
                title=html.escape(title),
                css=html.escape(asset_url("swagger-ui.css")),
                icon32=html.escape(asset_url("favicon-32x32.png")),
                icon16=html.escape(asset_url("favicon-16x16.png")),
                bundle=html.escape(asset_url("swagger-ui-bundle.js")),
                init=html.escape(asset_url("swagger-init.js")),
                openapi=html.escape(url_for(f"{name}.openapi_json")),
            )
        )

    @bp.get("/redoc")
    async def redoc() -> ResponseReturnValue:
        return page(
            _REDOC_PAGE.format(
                title=html.escape(title),
                icon32=html.escape(asset_url("favicon-32x32.png")),
                script=html.escape(asset_url("redoc.standalone.js")),
                openapi=html.escape(url_for(f"{name}.openapi_json")),
            )
        )

    @bp.get("/docs/static/<filename>")
    async def asset(filename: str) -> ResponseReturnValue:
        if filename not in sources:
            abort(404)
        found = loaded.get(filename)
        if found is None:
            found = await trio.to_thread.run_sync(_load_asset, sources[filename][0])
            loaded[filename] = found
        gzipped = found.gzipped is not None and request.accept_encodings["gzip"] > 0
        # Each encoding is its own representation, so it gets its own entity tag.
        etag = f"{found.etag}-gzip" if gzipped else found.etag
        headers = {
            "Cache-Control": f"public, max-age={ASSET_MAX_AGE_S}, immutable",
            "ETag": f'"{etag}"',
            "X-Content-Type-Options": "nosniff",
        }
        if found.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if request.if_none_match.contains_weak(etag):
            return _respond(b"", 304, None, headers)
        if gzipped and found.gzipped is not None:
            headers["Content-Encoding"] = "gzip"
            return _respond(found.gzipped, 200, found.content_type, headers)
        return _respond(found.body, 200, found.content_type, headers)

    @bp.get("/openapi.json")
    async def openapi_json() -> ResponseReturnValue:
        if not openapi_cache:
            body = encode_openapi(get_openapi())
            openapi_cache.append((body, _etag(body)))
        body, etag = openapi_cache[0]
        headers = {"Cache-Control": "no-cache", "ETag": f'"{etag}"'}
        if request.if_none_match.contains_weak(etag):
            return _respond(b"", 304, None, headers)
        return _respond(body, 200, "application/json", headers)

    return bp


def _respond(
    body: bytes, status: int, content_type: str | None, headers: Mapping[str, str]
) -> ResponseReturnValue:
    response = current_app.response_class(body, status=status, content_type=content_type)
    response.headers.update(headers)
    return response


_SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Swagger UI</title>
<link rel="stylesheet" href="{css}">
<link rel="icon" type="image/png" sizes="32x32" href="{icon32}">
<link rel="icon" type="image/png" sizes="16x16" href="{icon16}">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{bundle}"></script>
<script src="{init}"></script>
</body>
</html>
"""

_REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - ReDoc</title>
<link rel="icon" type="image/png" sizes="32x32" href="{icon32}">
<style>body {{ margin: 0; padding: 0; }}</style>
</head>
<body>
<redoc spec-url="{openapi}"></redoc>
<script src="{script}"></script>
</body>
</html>
"""
