"""The dashboard's pages and files as HTTP resources (the browser tests are in tests/e2e/browser):
where they are, their headers (CSP, caching), and that nothing from the URL reaches a page
unescaped. The pages carry no data: everything comes from the API with the user's token."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from dtq.net.ui.routes import CSP, PAGES

from .helpers import Client

PAGE_PATHS = ["/ui/", *(f"/ui/{k}" for k in PAGES if k not in ("", "task"))]


async def test_front_page_redirects_to_the_dashboard(client: Client) -> None:
    reply = await client.get("/")
    assert reply.status == 302
    assert reply.headers["Location"] == "/ui/"


@pytest.mark.parametrize("path", [*PAGE_PATHS, "/ui/tasks/0190f1a2-0000-7000-8000-000000000000"])
async def test_every_page_is_html_with_a_strict_policy(client: Client, path: str) -> None:
    reply = await client.get(path)  # no credentials: the shell is public, its data is not
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/html")
    policy = reply.headers["Content-Security-Policy"]
    assert policy == CSP
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    html = reply.body.decode()
    assert "<script>" not in html and " style=" not in html  # nothing inline
    module = re.search(r'<script type="module" src="([^"]+)"></script>', html)
    assert module is not None
    script = await client.get(module.group(1))
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")


async def test_the_api_docs_keep_their_own_policy(client: Client) -> None:
    reply = await client.get("/docs")
    assert reply.headers["Content-Security-Policy"] != CSP


async def test_a_hostile_task_id_in_the_url_is_escaped(client: Client) -> None:
    reply = await client.get("/ui/tasks/%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E")
    assert reply.status == 200
    html = reply.body.decode()
    assert "<img" not in html
    assert 'data-task-id="&#34;&gt;&lt;img src=x onerror=alert(1)&gt;"' in html


async def test_static_files_are_versioned_cached_and_compressed(client: Client) -> None:
    html = (await client.get("/ui/")).body.decode()
    css = re.search(r'href="(/ui/static/([0-9a-f]+)/app\.css)"', html)
    assert css is not None
    url, version = css.group(1), css.group(2)
    plain = await client.get(url)
    assert plain.status == 200 and plain.headers["Content-Type"].startswith("text/css")
    assert "immutable" in plain.headers["Cache-Control"]
    zipped = await client.get(url, headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == plain.body
    again = await client.get(url, headers={"If-None-Match": plain.headers["ETag"]})
    assert again.status == 304 and again.body == b""
    # An older version's URL still gets today's file, but not for a year.
    stale = await client.get(url.replace(version, "0" * len(version)))
    assert stale.status == 200 and stale.headers["Cache-Control"] == "no-cache"


@pytest.mark.parametrize(
    "name", ["nope.js", "../routes.py", "%2e%2e/routes.py", "pages/../../routes.py"]
)
async def test_only_shipped_files_are_served(client: Client, name: str) -> None:
    reply = await client.get(f"/ui/static/abc/{name}")
    assert reply.status == 404


async def test_the_page_knows_what_each_role_may_do(client: Client) -> None:
    html = (await client.get("/ui/tasks")).body.decode()
    permissions = re.search(r"data-permissions='([^']+)'", html)
    assert permissions is not None
    viewer = json.loads(permissions.group(1))["viewer"]
    assert "tasks:read" in viewer and "tasks:write" not in viewer and "queues:write" not in viewer
