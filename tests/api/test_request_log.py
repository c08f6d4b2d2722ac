"""One log line per request: method, path, status, duration, request id; no credentials."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from dtq.core.accounts import UserCreate
from dtq.logs import configure_logging
from dtq.net.routing import Services
from dtq.settings import Settings

from .helpers import Client


async def test_one_line_per_request_with_the_request_id(client: Client, keys: dict) -> None:
    key = next(iter(keys.values()))
    with capture_logs() as logs:
        reply = (
            await client.api_key(key).with_headers({"X-Request-ID": "req-42"}).get("/api/v1/tasks")
        )
    assert reply.status == 200
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert line["method"] == "GET"
    assert line["path"] == "/api/v1/tasks"
    assert line["status"] == 200
    assert line["request_id"] == "req-42"
    assert isinstance(line["duration_ms"], float)
    assert key not in repr(logs)  # credentials never reach the log


async def test_login_logs_no_password_or_token(client: Client, services: Services) -> None:
    secret = "s3cret-Pass-never-logged"
    await services.accounts.create_user(UserCreate(username="ana", password=secret))
    with capture_logs() as logs:
        reply = await client.post("/api/v1/auth/login", {"username": "ana", "password": secret})
    assert reply.status == 200
    assert any(e["event"] == "request" for e in logs)
    assert secret not in repr(logs)
    assert reply.json["token"] not in repr(logs)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)
    structlog.reset_defaults()


def test_json_lines_when_asked(restore_logging: None) -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    structlog.get_logger("dtq.test").info("hello", answer=42)
    record = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert record["event"] == "hello"
    assert record["answer"] == 42
    assert record["timestamp"].endswith("Z")
    assert record["level"] == "info"
