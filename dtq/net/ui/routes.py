"""The dashboard's routes: page shells under /ui/ and their static files.

Each page is a small HTML shell (Jinja2, autoescaped) naming the ES module that fills it in.
The modules call the same REST API and WebSockets as any client, with the bearer token the
sign-in page keeps in `sessionStorage`, so the API (and its roles) decides what anyone may
see or do; the shells carry no data. Every /ui response has a Content-Security-Policy without
inline scripts or styles: whatever a task carries can only ever become text.

Static files are served from `/ui/static/<version>/...`, `version` being a hash of all of
them: relative `import`s between modules stay inside one version, so files can be cached for
a year and an upgrade is still fetched anew.
"""

from __future__ import annotations

import hashlib
from typing import Any

import trio
from quart import Blueprint, abort, current_app, render_template, request

from dtq.core.auth.roles import ROLE_PERMISSIONS
from dtq.net.ui import assets

__all__ = ["CSP", "PAGES", "make_ui_blueprint"]

# Scripts, styles and connections only from this origin ('self' covers same-origin ws: too);
# no inline script or style anywhere; data: for the favicon; blob: for export downloads.
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)

# Page -> (module, title): its template is templates/ui/<module>.html, its script
# static/pages/<module>.js; the key is its URL under /ui/ (but "task" is /ui/tasks/<id>).
PAGES: dict[str, tuple[str, str]] = {
    "": ("overview", "Overview"),
    "task": ("task", "Task"),
    "login": ("login", "Sign in"),
    "tasks": ("tasks", "Tasks"),
    "queues": ("queues", "Queues"),
    "failed": ("failed", "Failed"),
    "workers": ("workers", "Workers"),
    "schedules": ("schedules", "Schedules"),
}
NAV = ("", "tasks", "queues", "failed", "workers", "schedules")


class _Static:
    """The static files, loaded (in a worker thread) on first use."""

    def __init__(self) -> None:
        self.files: dict[str, assets.Asset] = {}
        self.version = ""
        self._lock = trio.Lock()

    async def ready(self) -> _Static:
        if not self.version:
            async with self._lock:
                if not self.version:
                    self.files = await trio.to_thread.run_sync(assets.load_all)
                    digest = hashlib.sha256()
                    for name, asset in self.files.items():
                        digest.update(f"{name}:{asset.etag};".encode())
                    self.version = digest.hexdigest()[:12]
        return self


def _permissions() -> dict[str, list[str]]:
    """role -> permissions: the page offers only what the signed-in role may do."""
    return {str(role): sorted(str(p) for p in perms) for role, perms in ROLE_PERMISSIONS.items()}


def _headers(response: Any) -> Any:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def make_ui_blueprint() -> Blueprint:
    bp = Blueprint("ui", __name__, template_folder="templates")
    static = _Static()
    permissions = _permissions()

    async def page(key: str, current: str | None = None, **context: Any) -> Any:
        module, title = PAGES[key]
        ready = await static.ready()
        root = request.script_root
        body = await render_template(
            f"ui/{module}.html",
            title=title,
            module=module,
            nav=[(k, PAGES[k][1]) for k in NAV],
            current=key if current is None else current,
            static=f"{root}/ui/static/{ready.version}",
            root=root,
            permissions=permissions,
            **context,
        )
        response = current_app.response_class(body, content_type="text/html; charset=utf-8")
        response.headers["Cache-Control"] = "no-cache"
        return _headers(response)

    @bp.get("/ui/")
    async def overview() -> Any:
        return await page("")

    @bp.get("/ui/<any(login, tasks, queues, failed, workers, schedules):name>")
    async def named(name: str) -> Any:
        return await page(name)

    @bp.get("/ui/tasks/<task_id>")
    async def task(task_id: str) -> Any:
        # The id is only put in a data attribute (escaped); the module asks the API for it.
        return await page("task", current="tasks", task_id=task_id)

    @bp.get("/ui/static/<version>/<path:filename>")
    async def asset(version: str, filename: str) -> Any:
        ready = await static.ready()
        found = ready.files.get(filename)
        if found is None:
            abort(404)
        headers = {"ETag": f'"{found.etag}"', "X-Content-Type-Options": "nosniff"}
        # An old version's URL still answers (with today's file) but is not cached for long.
        headers["Cache-Control"] = (
            f"public, max-age={assets.MAX_AGE_S}, immutable"
            if version == ready.version
            else "no-cache"
        )
        if found.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if request.if_none_match.contains_weak(found.etag):
            response = current_app.response_class(b"", status=304)
        elif found.gzipped is not None and request.accept_encodings["gzip"] > 0:
            headers["Content-Encoding"] = "gzip"
            response = current_app.response_class(found.gzipped, content_type=found.content_type)
        else:
            response = current_app.response_class(found.body, content_type=found.content_type)
        response.headers.update(headers)
        return response

    return bp
