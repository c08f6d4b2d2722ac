"""Queues through the API: figures, config, pause/resume, purge, limits and explain."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from dtq.core.auth import Role
from dtq.net.routing import Services

from .helpers import Client, create_task, error_of, lease, ok

Q = "/api/v1/queues"


async def ack(client: Client, *tasks: dict[str, Any]) -> None:
    acks = [{"id": t["id"], "lease_id": t["lease"]["id"], "status": "completed"} for t in tasks]
    results = ok(await client.post("/api/v1/tasks/ack", {"acks": acks}))
    assert results["succeeded"] == len(tasks), results


async def configure(client: Client, queue: str, **body: Any) -> dict[str, Any]:
    info: dict[str, Any] = ok(await client.put(f"{Q}/{queue}", body))
    return info


# -- records and figures ---------------------------------------------------------------------


async def test_a_queue_exists_once_named_or_configured(admin: Client) -> None:
    error_of(await admin.get(f"{Q}/nope"), 404, "NOT_FOUND")
    error_of(await admin.post(f"{Q}/nope/pause"), 404, "NOT_FOUND")
    await create_task(admin, queue="mail")
    await configure(admin, "billing", concurrency_limit=2)
    rows = (await admin.get(f"{Q}?limit=1")).json
    assert [q["name"] for q in rows["data"]] == ["billing"]
    assert rows["pagination"] == {"skip": 0, "limit": 1, "total": 2, "pages": 2}
    mail = ok(await admin.get(f"{Q}/mail"))
    assert mail == {
        "name": "mail", "paused": False, "pending": 1, "scheduled": 0, "running": 0,
        "failed": 0, "concurrency_limit": None, "concurrency_limit_per_key": None,
        "rate_limit_per_second": None, "oldest_pending_age_s": mail["oldest_pending_age_s"],
        "workers_polling": 0,
    }  # fmt: skip
    assert mail["oldest_pending_age_s"] >= 0


async def test_figures_follow_the_tasks(admin: Client) -> None:
    await create_task(admin, queue="q")
    await create_task(admin, queue="q", delay=3600)
    failing = await create_task(admin, queue="q")
    await create_task(admin, queue="q", priority="high")
    (leased,) = await lease(admin, queues=["q"])
    assert leased["priority"] == "high"
    info = ok(await admin.get(f"{Q}/q"))
    assert (info["pending"], info["scheduled"], info["running"]) == (2, 1, 1)
    assert info["workers_polling"] == 1
    got = await lease(admin, queues=["q"], max_tasks=5)
    assert failing["id"] in {t["id"] for t in got}
    for t in got:
        body = {"lease_id": t["lease"]["id"], "error": "boom"}
        ok(await admin.post(f"/api/v1/tasks/{t['id']}/fail", body))
    info = ok(await admin.get(f"{Q}/q"))
    assert (info["pending"], info["running"], info["failed"]) == (0, 1, 2)


async def test_put_validates_and_null_removes(admin: Client) -> None:
    for bad in ({"concurrency_limit": 0}, {"concurrency_limit": -1},
                {"concurrency_limit_per_key": 1.5}, {"rate_limit_per_second": 0},
                {"rate_limit_per_second": "fast"}, {"paused": "yes"}, {"other": 1}):  # fmt: skip
        field = next(iter(bad))
        error_of(await admin.put(f"{Q}/q", bad), 400, "INVALID_REQUEST", field=field)
    error_of(await admin.put(f"{Q}/bad%20name", {}), 400, "INVALID_REQUEST", field="name")
    info = await configure(admin, "q", concurrency_limit=3, rate_limit_per_second=2.5)
    assert (info["concurrency_limit"], info["rate_limit_per_second"]) == (3, 2.5)
    info = await configure(admin, "q", concurrency_limit=None)
    assert (info["concurrency_limit"], info["rate_limit_per_second"]) == (None, 2.5)


async def test_roles(client: Client, tokens: dict[Role, str]) -> None:
    admin = client.bearer(tokens[Role.ADMIN])
    await create_task(admin, queue="q")
    for role in (Role.ADMIN, Role.OPERATOR):
        ok(await client.bearer(tokens[role]).post(f"{Q}/q/pause"))
    viewer = client.bearer(tokens[Role.VIEWER])
    ok(await viewer.get(f"{Q}/q"))
    error_of(await viewer.post(f"{Q}/q/resume"), 403, "FORBIDDEN")
    error_of(await viewer.put(f"{Q}/q", {"paused": False}), 403, "FORBIDDEN")
    worker = client.bearer(tokens[Role.WORKER])
    error_of(await worker.post(f"{Q}/q/purge"), 403, "FORBIDDEN")
    error_of(await client.get(f"{Q}/q"), 401, "UNAUTHORIZED")


# -- pause, resume, purge ----------------------------------------------------------------------


async def test_pause_stops_leasing_at_once_and_resume_wakes_waiters(
    admin: Client, services: Services
) -> None:
    running = await create_task(admin, queue="q")
    (held,) = await lease(admin, queues=["q"])
    waiting = await create_task(admin, queue="q")
    assert ok(await admin.post(f"{Q}/q/pause"))["paused"] is True
    assert await lease(admin, queues=["q"]) == []  # the very next request
    assert await lease(admin) == []  # nor through "any queue"
    ok(
        await admin.post(
            f"/api/v1/tasks/{running['id']}/complete", {"lease_id": held["lease"]["id"]}
        )
    )  # fmt: skip  running ones finish
    got: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def poll() -> None:
            got.extend(await lease(admin, "w2", queues=["q"], wait=30))

        nursery.start_soon(poll)
        with trio.fail_after(10):
            while services.queue.dispatcher.waiting_count() == 0:
                await trio.sleep(0)
        assert ok(await admin.post(f"{Q}/q/resume"))["paused"] is False
    assert [t["id"] for t in got] == [waiting["id"]]


async def test_purge_removes_pending_only(admin: Client) -> None:
    for _ in range(7):
        await create_task(admin, queue="q")
    await create_task(admin, queue="q", delay=600)
    await create_task(admin, queue="other")
    (_held,) = await lease(admin, queues=["q"])
    assert ok(await admin.post(f"{Q}/q/purge")) == {"queue": "q", "purged": 7}
    info = ok(await admin.get(f"{Q}/q"))
    assert (info["pending"], info["scheduled"], info["running"]) == (0, 0, 1)
    assert ok(await admin.get(f"{Q}/other"))["pending"] == 1
    assert await lease(admin, queues=["q"]) == []


# -- limits ------------------------------------------------------------------------------------


async def test_concurrency_limit_counts_until_ack_and_wakes_waiters(
    admin: Client, services: Services
) -> None:
    await configure(admin, "q", concurrency_limit=3)
    for _ in range(6):
        await create_task(admin, queue="q")
    first = await lease(admin, queues=["q"], max_tasks=10)
    assert len(first) == 3
    assert await lease(admin, "w2", max_tasks=10) == []
    got: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def poll() -> None:
            got.extend(await lease(admin, "w2", queues=["q"], max_tasks=10, wait=30))

        nursery.start_soon(poll)
        with trio.fail_after(10):
            while services.queue.dispatcher.waiting_count() == 0:
                await trio.sleep(0)
        await ack(admin, first[0])
    assert len(got) == 1  # exactly the freed slot
    assert ok(await admin.get(f"{Q}/q"))["running"] == 3


async def test_released_and_expired_leases_free_their_slots(
    admin: Client, services: Services, mock_clock: trio.testing.MockClock
) -> None:
    await configure(admin, "q", concurrency_limit=1)
    for _ in range(3):
        await create_task(admin, queue="q")
    (a,) = await lease(admin, queues=["q"], lease_seconds=5)
    assert await lease(admin, queues=["q"]) == []
    ok(await admin.post(f"/api/v1/tasks/{a['id']}/release", {"lease_id": a["lease"]["id"]}))
    (_b,) = await lease(admin, queues=["q"], lease_seconds=5)
    assert await lease(admin, queues=["q"]) == []
    mock_clock.jump(6)  # the reaper expires b's lease (its write commits in a thread)
    for _ in range(100_000):
        if services.queue.dispatcher.limits.running["q"] == 0:
            break
        await trio.sleep(0)
    assert ok(await admin.get(f"{Q}/q"))["running"] == 0
    assert len(await lease(admin, queues=["q"])) == 1


async def test_per_key_limit_lets_other_keys_go_ahead(admin: Client) -> None:
    await configure(admin, "q", concurrency_limit_per_key=1)
    a1 = await create_task(admin, queue="q", concurrency_key="a")
    a2 = await create_task(admin, queue="q", concurrency_key="a")
    b1 = await create_task(admin, queue="q", concurrency_key="b")
    b2 = await create_task(admin, queue="q", concurrency_key="b")
    free = await create_task(admin, queue="q")
    got = await lease(admin, queues=["q"], max_tasks=10)
    assert [t["id"] for t in got] == [a1["id"], b1["id"], free["id"]]
    assert got[0]["concurrency_key"] == "a"
    assert await lease(admin, queues=["q"], max_tasks=10) == []
    await ack(admin, got[1])  # b's slot frees: b2 goes, a2 still waits
    assert [t["id"] for t in await lease(admin, queues=["q"], max_tasks=10)] == [b2["id"]]
    await ack(admin, got[0])
    assert [t["id"] for t in await lease(admin, queues=["q"], max_tasks=10)] == [a2["id"]]


async def test_concurrency_key_is_validated(admin: Client) -> None:
    for bad in ("", "x" * 201, "a\u0000b", 5):
        reply = await admin.post("/api/v1/tasks", {"name": "j", "concurrency_key": bad})
        error_of(reply, 400, "INVALID_REQUEST", field="concurrency_key")


async def test_rate_limit_with_the_injected_clock(
    admin: Client, mock_clock: trio.testing.MockClock
) -> None:
    await configure(admin, "q", rate_limit_per_second=20)
    ok(await admin.post("/api/v1/tasks/batch", {"tasks": [{"name": "j", "queue": "q"}] * 200}), 201)
    per_second = []
    for _ in range(5):
        n = 0
        for _ in range(10):  # ten polls in each second, 0.1 s apart
            n += len(await lease(admin, queues=["q"], max_tasks=100))
            mock_clock.jump(0.1)
        per_second.append(n)
    # the first second may use the burst (a full bucket: one second's worth) on top
    assert 20 <= per_second[0] <= 41, per_second
    assert all(19 <= n <= 21 for n in per_second[1:]), per_second


async def test_rate_limited_waiter_is_woken_when_a_token_refills(
    admin: Client, services: Services, mock_clock: trio.testing.MockClock
) -> None:
    await configure(admin, "q", rate_limit_per_second=1)
    await create_task(admin, queue="q")
    await create_task(admin, queue="q")
    assert len(await lease(admin, queues=["q"], max_tasks=5)) == 1
    got: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def poll() -> None:
            got.extend(await lease(admin, "w2", queues=["q"], max_tasks=5, wait=30))

        nursery.start_soon(poll)
        await trio.testing.wait_all_tasks_blocked()
        assert services.queue.dispatcher.waiting_count() == 1 and not got
        mock_clock.jump(0.5)
        await trio.testing.wait_all_tasks_blocked()
        assert services.queue.dispatcher.waiting_count() == 1  # no token yet
        mock_clock.jump(0.6)  # the next token is there: the reaper wakes the waiter
        for _ in range(100_000):  # (the grant commits in the writer's thread)
            if got:
                break
            await trio.sleep(0)
    assert len(got) == 1


async def test_limits_survive_a_restart(tmp_path: Any) -> None:
    from dtq.models import LeaseRequest, QueueUpdate, TaskCreate
    from dtq.server import open_queue
    from dtq.settings import Durability, Settings

    settings = Settings(data_dir=str(tmp_path / "d"), durability=Durability.OS)
    async with open_queue(settings) as tq:
        await tq.queues.update("q", QueueUpdate(concurrency_limit=2))
        for _ in range(4):
            await tq.create(TaskCreate(name="j", queue="q"))
        got = await tq.lease(LeaseRequest(worker_id="w", queues=["q"], max_tasks=5, wait=0))
        assert len(got) == 2
    async with open_queue(settings) as tq:  # the two leases still run: no slot is free
        again = await tq.lease(LeaseRequest(worker_id="w", queues=["q"], max_tasks=5, wait=0))
        assert again == []
        assert (await tq.queues.get("q")).running == 2


# -- explain -----------------------------------------------------------------------------------


def codes(explained: dict[str, Any]) -> list[str]:
    return [r["code"] for r in explained["reasons"]]


async def explain(client: Client, task: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = ok(await client.get(f"/api/v1/tasks/{task['id']}/explain"))
    return out


async def test_explain_each_reason(admin: Client) -> None:
    later = await create_task(admin, queue="q", delay=600)
    e = await explain(admin, later)
    assert (e["status"], e["runnable"]) == ("pending", False)
    assert codes(e) == ["scheduled", "no_worker_polling"]
    assert e["reasons"][0]["run_at"] > 0

    first = await create_task(admin, queue="q", retry_count=2)
    second = await create_task(admin, queue="q")
    assert "position" not in codes(await explain(admin, first))
    e = await explain(admin, second)
    assert next(r for r in e["reasons"] if r["code"] == "position")["ahead"] == 1
    assert e["runnable"] is True

    (held,) = await lease(admin, queues=["q"])
    e = await explain(admin, held)
    assert codes(e) == ["running"] and e["reasons"][0]["worker_id"] == "worker-1"
    body = {"lease_id": held["lease"]["id"], "error": "boom"}
    ok(await admin.post(f"/api/v1/tasks/{held['id']}/fail", body))
    assert codes(await explain(admin, held))[0] == "retry_backoff"

    await configure(admin, "q", paused=True)
    assert "queue_paused" in codes(await explain(admin, second))
    await configure(admin, "q", paused=False, concurrency_limit=1)
    (other,) = await lease(admin, queues=["q"])
    e = await explain(admin, later if other["id"] != later["id"] else second)
    limit = next(r for r in e["reasons"] if r["code"] == "queue_concurrency_limit")
    assert (limit["running"], limit["limit"]) == (1, 1)
    await ack(admin, other)
    assert codes(await explain(admin, other)) == ["finished"]


async def test_explain_key_and_rate_limits_and_polling(admin: Client) -> None:
    await configure(admin, "k", concurrency_limit_per_key=1)
    await create_task(admin, queue="k", concurrency_key="c1")
    blocked = await create_task(admin, queue="k", concurrency_key="c1")
    await lease(admin, queues=["k"])
    e = await explain(admin, blocked)
    assert "key_concurrency_limit" in codes(e) and e["runnable"] is False

    await configure(admin, "r", rate_limit_per_second=1)
    await create_task(admin, queue="r", name="n1")
    slow = await create_task(admin, queue="r", name="n1")
    await lease(admin, queues=["r"], max_tasks=5)
    assert "queue_rate_limit" in codes(await explain(admin, slow))


async def test_explain_no_worker_polling(admin: Client) -> None:
    lonely = await create_task(admin, queue="nobody")
    e = await explain(admin, lonely)
    assert codes(e) == ["no_worker_polling"] and e["reasons"][0]["queue"] == "nobody"
    await lease(admin, names=["other-name"], queues=["nobody"])
    e = await explain(admin, lonely)
    assert codes(e) == ["no_worker_polling"] and e["reasons"][0]["name"] == "job"
    error_of(await admin.get(f"/api/v1/tasks/{'0' * 8}-0000-0000-0000-{'0' * 12}/explain"),
             404, "NOT_FOUND")  # fmt: skip


# -- events --------------------------------------------------------------------------------------


async def test_queue_events_on_the_bus(admin: Client, services: Services) -> None:
    await create_task(admin, queue="q")
    with services.bus.subscribe(lambda e: e.kind.startswith("queue.")) as sub:
        await admin.post(f"{Q}/q/pause")
        await admin.post(f"{Q}/q/resume")
        await configure(admin, "q", concurrency_limit=4)
        with trio.fail_after(5):
            items = await sub.next_batch()
    assert items is not None
    kinds = [getattr(e, "kind", None) for e in items]
    assert kinds == ["queue.paused", "queue.resumed", "queue.updated"]
    body = items[-1].to_dict()  # type: ignore[union-attr]
    assert body["queue"]["concurrency_limit"] == 4 and body["queue"]["name"] == "q"


@pytest.mark.parametrize("store_url", [""], indirect=False)
async def test_openapi_documents_the_routes(admin: Client) -> None:
    doc = (await admin.get("/openapi.json")).json
    assert {
        "/api/v1/queues",
        "/api/v1/queues/{name}/purge",
        "/api/v1/tasks/{task_id}/explain",
    } <= set(doc["paths"])
