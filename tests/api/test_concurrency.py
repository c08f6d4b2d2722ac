"""Many requests at once (they share group commits): each task is handed out once, an
idempotency key makes one task, acks race safely."""

from __future__ import annotations

from collections import Counter
from typing import Any

import trio

from .helpers import Client, Reply, create_task, get_task, ok, success_body


async def gather(*calls: Any) -> list[Reply]:
    results: list[Any] = [None] * len(calls)

    async def run(i: int, call: Any) -> None:
        results[i] = await call()

    async with trio.open_nursery() as nursery:
        for i, call in enumerate(calls):
            nursery.start_soon(run, i, call)
    return results


async def test_concurrent_leases_hand_each_task_out_once(admin: Client) -> None:
    ok(
        await admin.post("/api/v1/tasks/batch", {"tasks": [{"name": f"t{i}"} for i in range(10)]}),
        201,
    )

    def lease_call(i: int) -> Any:
        return lambda: admin.post(
            "/api/v1/tasks/lease", {"worker_id": f"w{i}", "wait": 0, "max_tasks": 3}
        )

    replies = await gather(*(lease_call(i) for i in range(8)))
    leased = [t for r in replies for t in ok(r)]
    assert len(leased) == 10
    assert len({t["id"] for t in leased}) == 10
    assert len({t["lease"]["id"] for t in leased}) == 10
    for task in leased:
        assert (await get_task(admin, task["id"]))["worker_id"] == task["worker_id"]


async def test_concurrent_creates_with_one_idempotency_key(admin: Client) -> None:
    body = {"name": "once", "idempotency_key": "same"}
    replies = await gather(*(lambda: admin.post("/api/v1/tasks", body) for _ in range(10)))
    assert Counter(r.status for r in replies) == {201: 1, 200: 9}
    assert len({r.data["id"] for r in replies}) == 1
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 1


async def test_racing_completions_record_one_result(admin: Client) -> None:
    task = await create_task(admin)
    leased = ok(await admin.post("/api/v1/tasks/lease", {"worker_id": "w", "wait": 0}))[0]
    path = f"/api/v1/tasks/{task['id']}/complete"

    def complete(i: int) -> Any:
        return lambda: admin.post(path, {"lease_id": leased["lease"]["id"], "result": i})

    replies = await gather(*(complete(i) for i in range(6)))
    assert Counter(r.status for r in replies) == {200: 1, 409: 5}
    [winner] = [r for r in replies if r.status == 200]
    assert (await get_task(admin, task["id"]))["result"] == winner.data["result"]
    dashboard = ok(await admin.get("/api/v1/analytics/dashboard"))
    assert dashboard["completed_tasks"] == 1
