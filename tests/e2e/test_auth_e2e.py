"""Auth and rate limits against `dtq serve` in a child process.

API keys made with `dtq keys create` in another process while the server runs must work at
once (the server reads keys from LMDB, no cache). The server runs with
DTQ_RATE_LIMIT_PER_MINUTE=5 so the limit is reached in a handful of requests.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import (
    BOUND_S,
    ServerProcess,
    bearer,
    login,
    run_cli,
    running_server,
    spawn_server,
)

pytestmark = pytest.mark.e2e

PER_MINUTE = 5
# Minute windows are aligned to the epoch, so one boundary may fall inside the test: after
# 2 * PER_MINUTE + 1 requests, at least one must have been refused.
ENOUGH_TO_BE_LIMITED = 2 * PER_MINUTE + 1


async def create_key(server: ServerProcess, *args: str) -> str:
    out = await run_cli("keys", "create", "--data-dir", str(server.data_dir), "--json", *args)
    created = json.loads(out)
    assert created["role"] in {"admin", "operator", "worker", "viewer"}
    key: str = created["key"]
    assert key
    return key


async def test_cli_key_works_at_once_and_credentials_are_required(tmp_path: Path) -> None:
    async with (
        spawn_server(tmp_path / "data", {"DTQ_RATE_LIMIT_PER_MINUTE": str(PER_MINUTE)}) as server,
        server.client() as client,
    ):
        with trio.fail_after(BOUND_S * 4):
            # 401 without credentials, with an unknown key, with a bad token
            for headers in ({}, {"X-API-Key": "dtq_nope_nope"}, bearer("not-a-jwt")):
                response = await client.get("/api/v1/tasks", headers=headers)
                assert response.status_code == 401, (headers, response.text)
                error = response.json()["error"]
                assert error["code"] == "UNAUTHORIZED"

            key = await create_key(server, "--role", "worker", "--name", "e2e-worker")
            worker = {"X-API-Key": key}
            response = await client.get("/api/v1/tasks", headers=worker)
            assert response.status_code == 200, response.text
            # Worker keys have their own limits (DTQ_WORKER_RATE_LIMIT_*), off by default.
            assert "X-RateLimit-Limit" not in response.headers
            response = await client.post(
                "/api/v1/tasks/lease", json={"worker_id": "w1", "wait": 0}, headers=worker
            )
            assert response.status_code == 200, response.text
            assert response.json()["data"] == []
            # an operator key, also made while the server runs, creates a task ...
            operator = {"X-API-Key": await create_key(server, "--role", "operator")}
            response = await client.post("/api/v1/tasks", json={"name": "x"}, headers=operator)
            assert response.status_code == 201, response.text
            assert response.headers["X-RateLimit-Limit"] == str(PER_MINUTE)
            task_id = response.json()["data"]["id"]
            # ... which the worker key may read but not delete: known (not 401), forbidden
            response = await client.get(f"/api/v1/tasks/{task_id}", headers=worker)
            assert response.status_code == 200, response.text
            response = await client.delete(f"/api/v1/tasks/{task_id}", headers=worker)
            assert response.status_code == 403, response.text
            assert response.json()["error"]["code"] == "FORBIDDEN"


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    async with (
        spawn_server(tmp_path / "data", {"DTQ_RATE_LIMIT_PER_MINUTE": str(PER_MINUTE)}) as server,
        server.client() as client,
    ):
        with trio.fail_after(BOUND_S * 4):
            key = await create_key(server, "--role", "viewer")
            statuses: list[int] = []
            limited: httpx.Response | None = None
            for _ in range(ENOUGH_TO_BE_LIMITED):
                response = await client.get("/api/v1/tasks", headers={"X-API-Key": key})
                statuses.append(response.status_code)
                if response.status_code == 429:
                    limited = response
                    break
                assert response.status_code == 200, response.text
            assert limited is not None, f"never limited at {PER_MINUTE}/minute: {statuses}"
            assert statuses.count(200) >= PER_MINUTE
            assert limited.json()["error"]["code"] == "RATE_LIMITED"
            assert 1 <= int(limited.headers["Retry-After"]) <= 60
            assert limited.headers["X-RateLimit-Limit"] == str(PER_MINUTE)
            assert limited.headers["X-RateLimit-Remaining"] == "0"

            # Limits are per key: a key with its own, higher limit is not held back ...
            roomy = await create_key(server, "--role", "viewer", "--rate-limit-per-minute", "1000")
            for _ in range(ENOUGH_TO_BE_LIMITED):
                response = await client.get("/api/v1/tasks", headers={"X-API-Key": roomy})
                assert response.status_code == 200, response.text
            # ... and a JWT user has a budget of its own.
            token = await login(client)
            response = await client.get("/api/v1/tasks", headers=bearer(token))
            assert response.status_code == 200, response.text


async def test_invalid_credentials_are_rate_limited_per_address(tmp_path: Path) -> None:
    # DESIGN.md "Rate limits": per client address when anonymous, and every /api/v1 response
    # carries X-RateLimit-*. A caller with a wrong key is, as far as the server knows, anonymous.
    # (Regression: bad credentials used to raise 401 before the limiter counted the request,
    # so guessing keys or tokens was never limited and the 401 had no X-RateLimit-* headers.)
    async with (
        running_server(tmp_path / "data", rate_limit_per_minute=PER_MINUTE) as server,
        server.client() as client,
    ):
        wrong = [{"X-API-Key": "dtq_bad_bad"}, bearer("not-a-jwt")]
        statuses = []
        with trio.fail_after(BOUND_S * 2):
            for i in range(ENOUGH_TO_BE_LIMITED):
                response = await client.get("/api/v1/tasks", headers=wrong[i % 2])
                statuses.append(response.status_code)
                assert response.status_code in {401, 429}, response.text
                assert "X-RateLimit-Limit" in response.headers, (i, dict(response.headers))
        assert 429 in statuses, statuses
