"""Fixtures for the dashboard tests: a real `dtq serve` process and Debian's Chromium, driven by
Playwright for Python (sync API) with the system browser as its executable: no browser is ever
downloaded (`playwright install` is never run).

Without Chromium or Playwright these tests skip, saying which is missing; under CI=true that is
a failure instead (.ci/run installs Chromium).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from .. import procs

CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWER_PASSWORD = "viewer-password-for-the-tests"
REPO_ROOT = Path(__file__).resolve().parents[3]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[test]')")
    executable = _chromium()
    if executable is None:
        _unavailable("Chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        # launch() gives every run a new, empty profile directory of its own.
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Api:
    """The REST API as an admin (bearer) for arranging and checking what the pages do."""

    url: str
    token: str
    worker_key: str
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(
            base_url=self.url + "/api/v1",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=procs.BOUND_S,
            # Idle connections go before the server's keep-alive timeout (5 s) closes them:
            # a request sent on one just as it closed fails without a response.
            limits=httpx.Limits(keepalive_expiry=2.0),
        )

    def call(self, method: str, path: str, json: Any = None, status: int = 200) -> Any:
        reply = self.http.request(method, path, json=json)
        assert reply.status_code == status, (method, path, reply.status_code, reply.text)
        return reply.json() if reply.content else None

    def create(self, **task: Any) -> dict[str, Any]:
        return self.call("POST", "/tasks", {"name": "job", **task}, status=201)["data"]

    def task(self, task_id: str) -> dict[str, Any]:
        return self.call("GET", f"/tasks/{task_id}")["data"]

    def lease(self, queue: str, worker_id: str = "ui-worker", wait: float = 0) -> list[dict]:
        reply = httpx.post(
            f"{self.url}/api/v1/tasks/lease",
            json={"worker_id": worker_id, "queues": [queue], "max_tasks": 10, "wait": wait},
            headers={"X-API-Key": self.worker_key},
            timeout=procs.BOUND_S + wait,
        )
        assert reply.status_code == 200, reply.text
        return list(reply.json()["data"])

    def as_worker(self, method: str, path: str, json: Any) -> Any:
        reply = httpx.request(
            method, f"{self.url}/api/v1{path}", json=json,
            headers={"X-API-Key": self.worker_key}, timeout=procs.BOUND_S,
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        return reply.json()["data"]


@dataclass
class UiServer:
    url: str
    api: Api


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory, browser: Any) -> Iterator[UiServer]:
    """One server for the session (tests keep apart by their own queues and names)."""
    base = tmp_path_factory.mktemp("ui-server")
    registry = procs.Processes(base / "logs")
    try:
        server = procs.Server(registry, base / "data").start()
        (worker_key,) = server.create_keys("worker")
        login = {"username": "admin", "password": procs.ADMIN_PASSWORD}
        token = httpx.post(f"{server.url}/api/v1/auth/login", json=login).json()["token"]
        api = Api(server.url, token, worker_key)
        api.call("POST", "/users", {"username": "viewer", "password": VIEWER_PASSWORD,
                                    "role": "viewer"}, status=201)  # fmt: skip
        try:
            yield UiServer(server.url, api)
        finally:
            api.http.close()
    finally:
        registry.kill_all()


class Page:
    """A browser tab of its own (new context: empty sessionStorage) that collects every console
    error and uncaught exception; the test fails if any was seen."""

    def __init__(self, context: Any, url: str) -> None:
        self.context = context
        self.url = url
        self.raw = context.new_page()
        self.problems: list[str] = []
        self.raw.on("console", self._console)
        self.raw.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))
        self.raw.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "assert"):
            self.problems.append(f"console {message.type}: {message.text} ({message.location})")

    def _dialog(self, dialog: Any) -> None:
        # An alert/confirm from page content is never ours (the UI uses <dialog> elements).
        self.problems.append(f"unexpected window dialog: {dialog.message}")
        dialog.dismiss()

    def goto(self, path: str) -> Any:
        return self.raw.goto(self.url + path)

    def sign_in(self, username: str = "admin", password: str = procs.ADMIN_PASSWORD,
                then: str = "/ui/") -> None:  # fmt: skip
        self.goto(f"/ui/login?next={then}")
        self.raw.fill("#username", username)
        self.raw.fill("#password", password)
        self.raw.click("#login-submit")
        self.raw.wait_for_url(f"{self.url}{then}")


@pytest.fixture
def new_page(browser: Any, ui_server: UiServer) -> Iterator[Any]:
    """`new_page(width=1280)` -> a `Page`; all are closed, and checked for errors, at the end."""
    opened: list[Page] = []

    def make(width: int = 1280, height: int = 900) -> Page:
        context = browser.new_context(viewport={"width": width, "height": height})
        page = Page(context, ui_server.url)
        opened.append(page)
        return page

    yield make
    problems = [p for page in opened for p in page.problems]
    for page in opened:
        page.context.close()
    assert problems == [], "the pages reported errors:\n" + "\n".join(problems)


@pytest.fixture
def page(new_page: Any) -> Page:
    """A signed-in admin tab, 1280 px wide."""
    tab: Page = new_page()
    tab.sign_in()
    return tab


def screenshot_dir(tmp_path: Path) -> Path:
    """docs/img when DTQ_UPDATE_SCREENSHOTS=1 (the README's pictures), else a temporary folder."""
    if os.environ.get("DTQ_UPDATE_SCREENSHOTS") == "1":
        target = REPO_ROOT / "docs" / "img"
        target.mkdir(parents=True, exist_ok=True)
        return target
    return tmp_path
