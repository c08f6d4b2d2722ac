"""`dtq.AsyncClient` and `dtq.Client` against a real server over real sockets (in this process), and
their retry policy against `httpx.MockTransport` with trio's autojump clock (no real waiting)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import trio

from dtq import (
    AsyncClient,
    Client,
    Conflict,
    DtqError,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    NotFound,
    RateLimited,
    Task,
    Unauthorized,
)
from dtq.models import AckItem
from dtq.settings import Settings

from .helpers import SERVE_ADMIN_PASSWORD as ADMIN_PASSWORD
from .webhook_support import run_receiver


def when(iso: str | None) -> datetime:
    assert iso is not None
    return datetime.fromisoformat(iso)


@pytest.fixture
async def admin(server_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server_url) as client:
        await client.login("admin", ADMIN_PASSWORD)
        yield client


async def api_key(admin: AsyncClient, role: str) -> str:
    """A key made over the API (`POST /api/v1/api-keys`) by the admin."""
    async with httpx.AsyncClient(base_url=admin.url) as http:
        reply = await http.post(
            "/api/v1/api-keys",
            json={"name": f"test-{role}", "role": role},
            headers={"Authorization": f"Bearer {admin.token}"},
        )
    assert reply.status_code == 201, reply.text
    return str(reply.json()["data"]["key"])


# --- the API, end to end ------------------------------------------------------------------------


async def test_login_and_credentials_from_the_environment(
    server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncClient(server_url) as client:
        with pytest.raises(Unauthorized) as caught:
            await client.login("admin", "not the password")
        assert caught.value.http_status == 401  # type: ignore[attr-defined]
        token = await client.login("admin", ADMIN_PASSWORD)
        assert token and client.token == token
        assert (await client.submit("Process Data")).name == "Process Data"

    monkeypatch.setenv("DTQ_URL", server_url + "/")
    monkeypatch.setenv("DTQ_TOKEN", token)
    async with AsyncClient() as from_env:
        assert from_env.url == server_url
        assert [t.name async for t in from_env.list()] == ["Process Data"]


async def test_submit_with_every_option(admin: AsyncClient) -> None:
    options: dict[str, Any] = {
        "description": "monthly report",
        "priority": "high",
        "queue": "reports",
        "delay": 60,
        "retry_count": 3,
        "timeout": 120,
        "idempotency_key": "report-2024-05",
        "tags": ["reports", "monthly"],
    }
    task = await admin.submit("Generate Report", {"month": "2024-05"}, **options)
    assert isinstance(task, Task)
    assert (task.name, task.payload, task.status) == (
        "Generate Report",
        {"month": "2024-05"},
        "pending",
    )
    assert (task.description, task.priority, task.queue) == ("monthly report", "high", "reports")
    assert (task.retry_count, task.timeout, task.attempts) == (3, 120.0, 0)
    assert task.idempotency_key == "report-2024-05"
    assert task.tags == ["reports", "monthly"]
    delay = when(task.run_at) - when(task.created_at)
    assert timedelta(seconds=59) < delay <= timedelta(seconds=61)
    # Delayed: not handed to a worker yet.
    assert await admin.lease("w-1", queues=["reports"], wait=0) == []

    # The same key and body: the first task again. The same key, another body: 409.
    again = await admin.submit("Generate Report", {"month": "2024-05"}, **options)
    assert again.id == task.id
    with pytest.raises(Conflict) as caught:
        await admin.submit("Generate Report", {"month": "2024-06"}, **options)
    assert caught.value.details.get("field") == "idempotency_key"

    run_at = datetime.now(UTC) + timedelta(hours=1)
    scheduled = await admin.submit("Later", run_at=run_at)
    assert abs(when(scheduled.run_at) - run_at) < timedelta(seconds=1)


async def test_submit_many_get_and_list_over_several_pages(admin: AsyncClient) -> None:
    created = await admin.submit_many(
        [{"name": f"job-{i}", "payload": {"i": i}, "priority": "low" if i % 5 else "high"}
         for i in range(23)]
    )  # fmt: skip
    assert [t.name for t in created] == [f"job-{i}" for i in range(23)]
    assert all(isinstance(t, Task) and t.status == "pending" for t in created)
    got = await admin.get(created[7].id)
    assert (got.id, got.payload, got.priority) == (created[7].id, {"i": 7}, "low")

    # 23 tasks, 5 a page: the iterator asks for 5 pages and yields each task once, in order
    # (one batch shares one created_at; ties go in submission order).
    listed = [t.id async for t in admin.list(page_size=5, sort="created_at", order="asc")]
    assert listed == [t.id for t in created]
    high = [t.name async for t in admin.list(page_size=2, priority="high", order="asc")]
    assert high == [f"job-{i}" for i in range(0, 23, 5)]
    later = await admin.submit("job-last")
    newest = [t.id async for t in admin.list(page_size=5, order="desc")]
    assert newest[0] == later.id and len(newest) == 24
    assert [t async for t in admin.list(status="completed")] == []


async def test_cancel_and_delete(admin: AsyncClient) -> None:
    task = await admin.submit("Process Data")
    cancelled = await admin.cancel(task.id)
    assert cancelled.status == "cancelled"
    assert (await admin.wait(task.id, timeout=5)).status == "cancelled"
    assert (await admin.cancel(task.id)).status == "cancelled"  # twice is not an error
    assert await admin.delete(task.id) is None
    with pytest.raises(NotFound):
        await admin.get(task.id)
    with pytest.raises(NotFound):
        await admin.delete(task.id)


async def test_wait_returns_once_a_worker_reports(admin: AsyncClient) -> None:
    ok = await admin.submit("Process Data", {"n": 1}, queue="wait")
    bad = await admin.submit("Process Data", {"n": 2}, queue="wait")

    async def work() -> None:
        (first,) = await admin.lease("test-worker", queues=["wait"], wait=5)
        assert first.id == ok.id and first.lease is not None and first.status == "running"
        await admin.complete(first.id, first.lease.id, {"rows": 3})
        (second,) = await admin.lease("test-worker", queues=["wait"], wait=5)
        assert second.lease is not None
        await admin.fail(second.id, second.lease.id, {"message": "disk full", "type": "OSError"})

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            done = await admin.wait(ok.id, timeout=10)
            failed = await admin.wait(bad.id, timeout=10)
    assert (done.status, done.result, done.worker_id) == ("completed", {"rows": 3}, "test-worker")
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.message, failed.error.type) == ("disk full", "OSError")


async def test_wait_raises_timeout_error_when_nothing_happens(admin: AsyncClient) -> None:
    task = await admin.submit("Nobody Runs This")
    before = trio.current_time()
    with pytest.raises(TimeoutError):
        await admin.wait(task.id, timeout=0.3)
    assert 0.3 <= trio.current_time() - before < 5
    assert (await admin.get(task.id)).status == "pending"


async def test_worker_protocol_lease_lost_on_a_stale_complete(admin: AsyncClient) -> None:
    task = await admin.submit("Process Data")
    (first,) = await admin.lease("w-1", wait=5, lease_seconds=30)
    assert first.lease is not None
    stale = first.lease.id
    extended = await admin.extend(task.id, stale, 60)
    assert extended.lease is not None and extended.lease.expires_at is not None
    released = await admin.release(task.id, stale)
    assert released.status == "pending"
    (second,) = await admin.lease("w-2", wait=5)
    assert second.lease is not None and second.lease.id != stale

    for stale_call in (
        admin.complete(task.id, stale, "late"),
        admin.fail(task.id, stale, "late"),
        admin.extend(task.id, stale, 60),
    ):
        with pytest.raises(LeaseLost) as caught:
            await stale_call
        assert isinstance(caught.value, Conflict)
        assert caught.value.details["field"] == "lease_id"
        assert caught.value.http_status == 409  # type: ignore[attr-defined]

    outcomes = await admin.ack(
        [
            AckItem(id=task.id, lease_id=stale, status="completed", result="late"),
            AckItem(id=task.id, lease_id=second.lease.id, status="completed", result="on time"),
        ]
    )
    assert [o.ok for o in outcomes] == [False, True]
    done = await admin.get(task.id)
    assert (done.status, done.result, done.worker_id) == ("completed", "on time", "w-2")
    with pytest.raises(LeaseLost):
        await admin.complete(task.id, second.lease.id, "twice")
    assert (await admin.get(task.id)).result == "on time"
    with pytest.raises(Conflict) as caught:
        await admin.cancel(task.id)  # completed is final
    assert not isinstance(caught.value, LeaseLost)


@pytest.mark.parametrize(
    "server_overrides", [{"lease_default_s": 0.5, "worker_timeout_s": 0.5}], indirect=True
)
async def test_an_expired_lease_gives_the_task_back(admin: AsyncClient) -> None:
    """DTQ_LEASE_DEFAULT_S and DTQ_WORKER_TIMEOUT_S, seen through the client."""
    await admin.heartbeat("w-silent", max_capacity=1)
    task = await admin.submit("Process Data", retry_count=1)
    last_try = await admin.submit("Process Data", retry_count=0)
    first, other = await admin.lease("w-silent", wait=5, max_tasks=2)  # default lease: 0.5 s
    assert first.id == task.id and other.id == last_try.id
    assert first.lease is not None and first.lease.expires_at is not None
    assert when(first.lease.expires_at) - when(first.started_at) <= timedelta(seconds=0.6)

    with trio.fail_after(10):
        while (again := await admin.get(task.id)).status != "pending":
            await trio.sleep(0.05)  # the server's reaper acts on its own time
    assert again.attempts == 1 and again.deliveries == 1
    assert again.error is not None and again.error.type == "lease_expired"
    with trio.fail_after(10):
        while (lost := await admin.get(last_try.id)).status != "pending":
            await trio.sleep(0.05)
    # a lost lease is no handler failure: no retry used, so no retry needed
    assert lost.error is not None and lost.error.type == "lease_expired"
    assert isinstance(first.lease.id, str)  # the lease response carries it
    with pytest.raises(LeaseLost):
        await admin.complete(task.id, first.lease.id, "too late")

    second, third = await admin.lease("w-2", wait=5, lease_seconds=30, max_tasks=2)
    assert second.id == task.id and second.lease is not None and second.lease.id
    done = await admin.complete(task.id, second.lease.id, "in time")
    assert (done.status, done.attempts, done.worker_id) == ("completed", 2, "w-2")
    assert done.deliveries == 2
    assert third.id == last_try.id and third.lease is not None and third.lease.id
    assert (await admin.complete(last_try.id, third.lease.id, "ok")).status == "completed"

    with trio.fail_after(10):
        while not [w for w in await admin.workers("inactive") if w.worker_id == "w-silent"]:
            await trio.sleep(0.05)


async def test_heartbeat_and_workers(admin: AsyncClient) -> None:
    worker = await admin.heartbeat("w-7", current_load=1, max_capacity=3, queues=["a"])
    assert (worker.worker_id, worker.status, worker.max_capacity) == ("w-7", "active", 3)
    (listed,) = await admin.workers("active")
    assert (listed.worker_id, listed.current_load, listed.queues) == ("w-7", 1, ["a"])
    assert await admin.workers("inactive") == []


@pytest.mark.parametrize(
    "server_overrides", [{"webhook_allow_private_networks": True}], indirect=True
)
async def test_webhooks_register_deliver_list_and_delete(admin: AsyncClient) -> None:
    async with run_receiver() as receiver:
        hook = await admin.create_webhook(receiver.url, ["task.created"], description="ci")
        assert hook["url"] == receiver.url and hook["events"] == ["task.created"]
        assert len(hook["secret"]) >= 16  # generated, shown only here
        assert [h["id"] for h in await admin.list_webhooks()] == [hook["id"]]
        got = await admin.get_webhook(hook["id"])
        assert got["description"] == "ci" and "secret" not in got

        task = await admin.submit("a")
        await receiver.wait_count(1)
        with trio.fail_after(10):
            while not (done := await admin.webhook_deliveries(hook["id"], status="delivered")):
                await trio.sleep(0.01)  # the receiver has it; the outcome is written after
        assert [(d["event"], d["task_id"]) for d in done] == [("task.created", task.id)]
        assert await admin.webhook_deliveries(hook["id"], status="pending") == []

        with pytest.raises(InvalidRequest):
            await admin.create_webhook(receiver.url, ["no.such.event"])
        await admin.delete_webhook(hook["id"])
        with pytest.raises(NotFound):
            await admin.get_webhook(hook["id"])
        assert await admin.list_webhooks() == []


async def test_dashboard_trends_and_export(admin: AsyncClient) -> None:
    await admin.submit_many([{"name": "a"}, {"name": "b"}, {"name": "c"}])
    (leased,) = await admin.lease("w-1", wait=5)
    assert leased.lease is not None
    await admin.complete(leased.id, leased.lease.id, 1)

    dashboard = await admin.dashboard()
    assert dashboard["total_tasks"] == 3
    assert dashboard["completed_tasks"] == 1
    assert dashboard["pending_tasks"] == 2

    trends = await admin.trends(days=3)
    assert trends["days"] == 3 and len(trends["series"]) == 3
    assert (await admin.trends(metric="error_rate"))["metric"] == "error_rate"

    exported = await admin.export("json", days=2)
    assert exported["days"] == 2
    assert exported["dashboard"]["total_tasks"] == 3
    assert sum(row["created"] for row in exported["daily"]) == 3

    csv = await admin.export("csv", days=2)
    assert isinstance(csv, str)
    lines = csv.strip().splitlines()
    assert lines[0].startswith("date,created,completed,failed")
    assert len(lines) == 3  # header + one row per day


async def test_api_errors_are_typed(admin: AsyncClient, server_url: str) -> None:
    with pytest.raises(NotFound) as not_found:
        await admin.get(str(uuid.uuid4()))
    assert not_found.value.details == {"field": "task_id", "reason": "no such task"}
    assert not_found.value.http_status == 404  # type: ignore[attr-defined]

    with pytest.raises(InvalidRequest) as invalid:
        await admin.submit("Process Data", priority="urgent")
    assert invalid.value.details["field"] == "priority"
    assert invalid.value.code == "INVALID_REQUEST"
    with pytest.raises(InvalidRequest) as invalid:
        await admin.get("not-a-uuid")
    assert invalid.value.details == {"field": "task_id", "reason": "Not a valid UUID"}
    with pytest.raises(InvalidRequest):
        await admin.submit("")
    with pytest.raises(InvalidRequest) as invalid:
        await admin.lease("bad worker id!")
    assert invalid.value.details["field"] == "worker_id"

    viewer_key = await api_key(admin, "viewer")
    async with AsyncClient(server_url, api_key=viewer_key) as viewer:
        assert [t async for t in viewer.list()] == []
        with pytest.raises(Forbidden):
            await viewer.submit("Process Data")
    for credentials in ({}, {"api_key": "dtq_not-a-key"}, {"token": "not.a.jwt"}):
        async with AsyncClient(server_url, **credentials) as nobody:
            with pytest.raises(Unauthorized) as unauthorized:
                await nobody.submit("Process Data")
            assert unauthorized.value.http_status == 401  # type: ignore[attr-defined]
    assert all(
        issubclass(cls, DtqError)
        for cls in (NotFound, InvalidRequest, Forbidden, Unauthorized, LeaseLost)
    )


def test_idle_connections_are_dropped_before_the_server_closes_them() -> None:
    """A request on a keep-alive connection the server is closing that very moment gets no
    answer, and a POST cannot be sent again: the clients give idle connections up first."""
    server_closes_after_s = Settings().keep_alive_timeout_s
    for client in (Client("http://127.0.0.1:1"), AsyncClient("http://127.0.0.1:1")):
        pool = client._http._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry <= server_closes_after_s / 2


async def test_the_sync_client_in_a_thread(admin: AsyncClient, server_url: str) -> None:
    worker_key = await api_key(admin, "worker")

    def scenario() -> tuple[Task, dict[str, Any]]:
        with Client(server_url, token=admin.token) as client:
            task = client.submit("Sync Job", {"x": 1}, priority="low", tags=["sync"])
            assert client.get(task.id).tags == ["sync"]
            (created,) = client.submit_many([{"name": "Sync Batch"}])
            listed = [t.id for t in client.list(page_size=1, status="pending")]
            assert sorted(listed) == sorted([task.id, created.id])
            with pytest.raises(TimeoutError):
                client.wait(task.id, timeout=0.2)
            assert client.cancel(created.id).status == "cancelled"
            client.delete(created.id)
            with pytest.raises(NotFound):
                client.get(created.id)
            with pytest.raises(InvalidRequest):
                client.submit("Sync Job", retry_count=-1)
        with Client(server_url, api_key=worker_key) as worker:
            with pytest.raises(Forbidden):
                worker.cancel(task.id)  # a worker key may not cancel tasks
            with pytest.raises(Forbidden):
                worker.dashboard()
            assert worker.get(task.id).status == "pending"
        with Client(server_url, token=admin.token) as client:
            return task, client.dashboard()

    task, dashboard = await trio.to_thread.run_sync(scenario)
    assert dashboard["total_tasks"] == 1  # the deleted one is gone
    (leased,) = await admin.lease("w-1", wait=5)
    assert leased.id == task.id


async def test_async_client_under_asyncio(admin: AsyncClient, server_url: str) -> None:
    """The same client class, driven by asyncio (in a thread, against this trio server)."""
    token = admin.token

    async def scenario() -> Task:
        async with AsyncClient(server_url, token=token) as client:
            task = await client.submit("Asyncio Job", {"n": 1}, queue="aio")

            async def work() -> None:
                (leased,) = await client.lease("aio-worker", queues=["aio"], wait=5)
                assert leased.lease is not None
                await client.complete(leased.id, leased.lease.id, {"loop": "asyncio"})

            worker = asyncio.create_task(work())
            done = await client.wait(task.id, timeout=10)
            await worker
            assert [t.id async for t in client.list(page_size=1)] == [task.id]
            with pytest.raises(NotFound):
                await client.get(str(uuid.uuid4()))
            other = await client.submit("Asyncio Job")
            with pytest.raises(TimeoutError):
                await client.wait(other.id, timeout=0.2)
            assert (await client.dashboard())["completed_tasks"] == 1
            return done

    done = await trio.to_thread.run_sync(lambda: asyncio.run(scenario()))
    assert (done.status, done.result) == ("completed", {"loop": "asyncio"})


# --- retries, with a fake server and a fake clock -----------------------------------------------

TASK_ID = "0b7e3a8e-5c1f-4c55-9b1e-0d3a3f6f2f11"


def task_json(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(Task.__struct_fields__)
    base.update(id=TASK_ID, name="Process Data", status="pending", priority="medium",
                queue="default", retry_count=0, attempts=0, timeout=3600.0, tags=[],
                deliveries=0)  # fmt: skip
    base.update(fields)
    return base


def ok(data: Any) -> httpx.Response:
    return httpx.Response(200, json={"status": "success", "data": data})


def error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"status": "error", "error": {"code": code, "message": code.lower(), "details": {}}}
    return httpx.Response(status, json=body, headers=headers)


class FakeServer:
    """An `httpx.MockTransport` handler: answers from a script, records when each call came."""

    def __init__(self, *script: Callable[[httpx.Request], httpx.Response]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, str, float]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path, trio.current_time()))
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return step(request)

    @property
    def gaps(self) -> list[float]:
        times = [t for _, _, t in self.calls]
        return [b - a for a, b in itertools.pairwise(times)]


def answer(response: httpx.Response) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: response


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture
async def fake() -> AsyncIterator[Callable[..., Any]]:
    """`client, server = await fake(*script)`: an AsyncClient wired to a FakeServer."""
    clients: list[AsyncClient] = []

    async def make(*script: Callable[[httpx.Request], httpx.Response], **kw: Any) -> Any:
        server = FakeServer(*script)
        client = AsyncClient(
            "http://dtq.invalid", api_key="dtq_test", **{"transport": "http", **kw}
        )
        await client._http.aclose()
        client._http = httpx.AsyncClient(base_url=client.url, transport=httpx.MockTransport(server))
        clients.append(client)
        return client, server

    yield make
    for client in clients:
        await client.aclose()


async def test_429_is_retried_after_retry_after(fake: Any, autojump_clock: Any) -> None:
    limited = error(429, "RATE_LIMITED", {"Retry-After": "7"})
    client, server = await fake(answer(limited), answer(limited), answer(ok(task_json())))
    task = await client.get(TASK_ID)
    assert task.id == TASK_ID
    assert server.gaps == [pytest.approx(7), pytest.approx(7)]

    # Refused before anything was done, so even a plain submit is safe to resend.
    client, server = await fake(answer(limited), answer(ok(task_json())))
    assert (await client.submit("Process Data")).id == TASK_ID
    assert [m for m, _, _ in server.calls] == ["POST", "POST"]


async def test_429_gives_up_after_max_retries(fake: Any, autojump_clock: Any) -> None:
    limited = error(429, "RATE_LIMITED", {"Retry-After": "2"})
    client, server = await fake(answer(limited), max_retries=3)
    with pytest.raises(RateLimited) as caught:
        await client.get(TASK_ID)
    assert caught.value.retry_after_s == 2
    assert caught.value.http_status == 429  # type: ignore[attr-defined]
    assert len(server.calls) == 4  # the first try and 3 retries

    client, server = await fake(answer(limited), max_retries=0)
    with pytest.raises(RateLimited):
        await client.get(TASK_ID)
    assert len(server.calls) == 1


async def test_503_is_retried_with_backoff(fake: Any, autojump_clock: Any) -> None:
    client, server = await fake(answer(error(503, "SERVICE_UNAVAILABLE")), answer(ok(task_json())))
    assert (await client.get(TASK_ID)).id == TASK_ID
    assert len(server.calls) == 2
    assert 0 < server.gaps[0] < 1


@pytest.mark.parametrize(
    ("call", "retried"),
    [
        (lambda c: c.get(TASK_ID), True),
        (lambda c: c.cancel(TASK_ID), True),
        (lambda c: c.delete(TASK_ID), True),
        (lambda c: c.submit("Process Data", idempotency_key="k-1"), True),
        (lambda c: c.submit_many([{"name": "a", "idempotency_key": "k-2"}]), True),
        (lambda c: c.ack([AckItem(id=TASK_ID, lease_id="l-1", status="completed")]), True),
        (lambda c: c.complete(TASK_ID, "l-1", 1), True),  # fenced by the lease
        (lambda c: c.submit("Process Data"), False),  # could create a second task
        (lambda c: c.submit_many([{"name": "a"}, {"name": "b", "idempotency_key": "k"}]), False),
        (lambda c: c.lease("w-1"), False),  # a lost answer would strand leased tasks
    ],
    ids=str.split(
        "get cancel delete submit-with-key batch-with-keys ack complete "
        "submit batch-without-keys lease"
    ),
)
async def test_connection_errors_are_retried_only_when_safe(
    fake: Any, autojump_clock: Any, call: Callable[[AsyncClient], Any], retried: bool
) -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/ack"):
            return ok({"results": [{"id": TASK_ID, "ok": True}], "succeeded": 1, "failed": 0})
        if path.endswith("/batch") or path.endswith("/lease"):
            return ok([task_json()])
        if request.method == "DELETE":
            return httpx.Response(204)
        return ok(task_json())

    client, server = await fake(refuse, reply)
    if retried:
        await call(client)
        assert len(server.calls) == 2
    else:
        with pytest.raises(httpx.ConnectError):
            await call(client)
        assert len(server.calls) == 1


async def test_connection_errors_back_off_then_give_up(fake: Any, autojump_clock: Any) -> None:
    client, server = await fake(refuse, max_retries=3)
    with pytest.raises(httpx.ConnectError):
        await client.get(TASK_ID)
    assert len(server.calls) == 4
    # about 0.25 s, 0.5 s, 1 s (each with jitter of +-50%)
    for gap, base in zip(server.gaps, (0.25, 0.5, 1.0), strict=True):
        assert base * 0.5 <= gap <= base * 1.5


async def test_an_error_that_is_not_the_guides_envelope(fake: Any) -> None:
    client, _ = await fake(answer(httpx.Response(502, text="Bad Gateway")))
    with pytest.raises(DtqError) as caught:
        await client.get(TASK_ID)
    assert type(caught.value) is DtqError
    assert caught.value.http_status == 502  # type: ignore[attr-defined]
    assert "Bad Gateway" in caught.value.message
