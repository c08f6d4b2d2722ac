"""A `* * * * *` schedule on a real server whose clock runs 30 times as fast (a test-only
setting, honoured only in a test environment): it fires once per minute, kill -9 included.

The server is killed while ticks are firing and restarted on the same data directory with its
clock carried on from where the first one was. No tick may fire twice (the task and the
schedule's next fire time commit together), and the ticks before the kill and after the restart
are consecutive minutes; the ticks missed while it was down come back as one (catch_up "one").
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import BOUND_S, bearer, login, spawn_server

pytestmark = pytest.mark.e2e

SPEED = 30.0  # a minute in 2 s
START = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a whole minute


async def tick_keys(client: httpx.AsyncClient, headers: dict[str, str]) -> list[int]:
    reply = await client.get("/api/v1/tasks", params={"name": "tick", "limit": 100,
                                                       "order": "asc"}, headers=headers)  # fmt: skip
    assert reply.status_code == 200, reply.text
    return [int(t["idempotency_key"].rsplit(":", 1)[1]) for t in reply.json()["data"]]


async def wait_for_ticks(client: httpx.AsyncClient, headers: dict[str, str], n: int) -> list[int]:
    with trio.fail_after(BOUND_S + n * 60 / SPEED):
        while len(keys := await tick_keys(client, headers)) < n:
            await trio.sleep(0.2)  # another process's clock: polled, with a deadline
    return keys


async def test_a_schedule_fires_once_per_minute_across_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env: dict[str, Any] = {"DTQ_TEST_CLOCK_SPEED": str(SPEED),
                           "DTQ_TEST_CLOCK_START_S": str(START)}  # fmt: skip
    launched = time.monotonic()
    async with spawn_server(data_dir, env) as server:
        async with server.client() as client:
            headers = bearer(await login(client))
            body = {"name": "every-minute", "cron": "* * * * *", "catch_up": "one",
                    "task": {"name": "tick", "queue": "cron"}}  # fmt: skip
            reply = await client.post("/api/v1/schedules", json=body, headers=headers)
            assert reply.status_code == 201, reply.text
            before = await wait_for_ticks(client, headers, 3)
        await server.kill_9()  # while the next ticks come due
    # The first server's clock was at most this far; the second carries on from there.
    reached = START + (time.monotonic() - launched) * SPEED
    env["DTQ_TEST_CLOCK_START_S"] = str(reached)
    async with spawn_server(data_dir, env) as server:
        async with server.client() as client:
            headers = bearer(await login(client))
            after_restart = await tick_keys(client, headers)
            keys = await wait_for_ticks(client, headers, len(after_restart) + 2)
            schedule = (await client.get("/api/v1/schedules/every-minute",
                                         headers=headers)).json()["data"]  # fmt: skip
        await server.terminate()
    assert len(keys) == len(set(keys)), keys  # no tick fired twice
    assert all(k % 60 == 0 for k in keys), keys
    assert keys[: len(before)] == before  # nothing acknowledged was lost
    assert keys == sorted(keys)
    # Before the kill: every minute. After it: at most one catch-up tick for the downtime,
    # then every minute again.
    gaps = [b - a for a, b in itertools.pairwise(keys)]
    assert gaps[: len(before) - 1] == [60] * (len(before) - 1), keys
    assert gaps[-1] == 60, keys
    assert sum(1 for g in gaps if g != 60) <= 1, keys
    assert schedule["last_run_at"] is not None and schedule["next_run_at"] is not None
