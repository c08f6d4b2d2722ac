"""`GET /metrics`: Prometheus text format, parsed with prometheus-client's own parser.

The server runs in process (core, accounts, app) and is driven through Quart's test client;
time is trio's manual `mock_clock`, so durations and queue waits are exact.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import prometheus_client
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from quart.typing import TestClientProtocol as Client

from dtq.core.accounts import ApiKeyCreate
from dtq.core.auth import Role, passwords
from dtq.models import LeaseRequest, Priority, Task, TaskCreate, TaskStatus
from dtq.net.app import build_openapi, create_app
from dtq.net.metrics import OTHER_QUEUE, UNMATCHED_ROUTE, Metrics, ReadySince
from dtq.net.routing import Services
from dtq.server import open_services
from dtq.settings import Durability, Settings

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(passwords, "SCRYPT_N", 2**8)


def make_settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {"rate_limit_per_minute": 0, "rate_limit_per_hour": 0}
    base.update(kw)
    return Settings(
        data_dir=str(tmp_path / "data"),
        admin_password="password",
        durability=Durability.OS,
        **base,
    )


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Services]:
    async with open_services(make_settings(tmp_path)) as services:
        yield services


@pytest.fixture
def client(svc: Services) -> Client:
    return create_app(svc).test_client()


async def login(client: Client) -> dict[str, str]:
    reply = await client.post(
        "/api/v1/auth/login", json={"username": "admin", "password": "password"}
    )
    assert reply.status_code == 200
    return {"Authorization": f"Bearer {(await reply.get_json())['token']}"}


async def call(
    client: Client, method: str, path: str, auth: dict[str, str], body: Any = None
) -> Any:
    reply = await client.open(path, method=method, json=body, headers=auth)
    assert 200 <= reply.status_code < 300, await reply.get_data()
    return (await reply.get_json())["data"]


async def scrape(client: Client, headers: dict[str, str] | None = None) -> Samples:
    reply = await client.get("/metrics", headers=headers or {})
    assert reply.status_code == 200, await reply.get_data()
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await reply.get_data(as_text=True))


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_metrics_after_a_few_tasks(
    client: Client, svc: Services, mock_clock: trio.testing.MockClock
) -> None:
    auth = await login(client)
    await call(client, "POST", "/api/v1/workers/heartbeat", auth, {"worker_id": "w1"})
    for i in range(3):
        await call(client, "POST", "/api/v1/tasks", auth, {"name": f"mail-{i}", "queue": "emails"})
    await call(client, "POST", "/api/v1/tasks", auth, {"name": "r", "queue": "reports"})
    await call(client, "POST", "/api/v1/tasks", auth, {"name": "later", "queue": "reports",
                                                        "delay": 3600})  # fmt: skip
    await call(client, "POST", "/api/v1/tasks", auth, {"name": "flaky", "queue": "retry-q",
                                                        "retry_count": 1})  # fmt: skip
    mock_clock.jump(2)
    lease = {"worker_id": "w1", "wait": 0, "max_tasks": 2, "queues": ["emails"]}
    a, b = await call(client, "POST", "/api/v1/tasks/lease", auth, lease)
    flaky = await call(client, "POST", "/api/v1/tasks/lease", auth,
                       {"worker_id": "w1", "wait": 0, "queues": ["retry-q"]})  # fmt: skip
    mock_clock.jump(3)
    await call(client, "POST", f"/api/v1/tasks/{a['id']}/complete", auth,
               {"lease_id": a["lease"]["id"]})  # fmt: skip
    await call(client, "POST", f"/api/v1/tasks/{b['id']}/fail", auth,
               {"lease_id": b["lease"]["id"], "error": "boom", "retry": False})  # fmt: skip
    await call(client, "POST", f"/api/v1/tasks/{flaky[0]['id']}/fail", auth,
               {"lease_id": flaky[0]["lease"]["id"], "error": "again"})  # fmt: skip
    assert (await client.get("/api/v1/tasks/not-a-uuid", headers=auth)).status_code == 400
    assert (await client.get("/no/such/page")).status_code == 404

    m = await scrape(client)

    # state, read at scrape time
    tasks = {s: value(m, "dtq_tasks", status=s) for s in TaskStatus}
    assert tasks == {"pending": 4, "running": 0, "completed": 1, "failed": 1, "cancelled": 0}
    assert value(m, "dtq_ready_tasks", queue="emails") == 1
    assert value(m, "dtq_ready_tasks", queue="reports") == 1
    assert value(m, "dtq_ready_tasks", queue="retry-q") == 0  # backing off: scheduled
    assert value(m, "dtq_scheduled_tasks") == 2
    assert value(m, "dtq_leases_held") == 0
    assert value(m, "dtq_lease_expiries_total") == 0
    assert value(m, "dtq_longpolls_waiting") == 0
    assert value(m, "dtq_workers", status="active") == 1
    assert value(m, "dtq_workers", status="inactive") == 0

    # task events, counted as they happen
    def events(event: str, queue: str) -> float:
        return value(m, "dtq_task_events_total", event=event, queue=queue)

    assert events("created", "emails") == 3
    assert events("leased", "emails") == 2
    assert events("completed", "emails") == 1
    assert events("failed", "emails") == 1
    assert events("retried", "retry-q") == 1
    assert value(m, "dtq_task_retries_total", queue="retry-q") == 1
    assert value(m, "dtq_task_retries_total", queue="emails") == 0
    assert value(m, "dtq_task_duration_seconds_count", queue="emails") == 1
    assert value(m, "dtq_task_duration_seconds_sum", queue="emails") == pytest.approx(3)
    assert value(m, "dtq_task_duration_seconds_bucket", queue="emails", le="1.0") == 0
    assert value(m, "dtq_task_duration_seconds_bucket", queue="emails", le="5.0") == 1
    assert value(m, "dtq_task_queue_wait_seconds_count", queue="emails") == 2
    assert value(m, "dtq_task_queue_wait_seconds_sum", queue="emails") == pytest.approx(4)

    # HTTP, by route pattern
    def requests(route: str, method: str, status: str) -> float:
        return value(m, "dtq_http_requests_total", route=route, method=method, status=status)

    assert requests("/api/v1/tasks", "POST", "201") == 6
    assert requests("/api/v1/tasks/lease", "POST", "200") == 2
    assert requests("/api/v1/tasks/<task_id>/complete", "POST", "200") == 1
    assert requests("/api/v1/tasks/<task_id>/fail", "POST", "200") == 2
    assert requests("/api/v1/tasks/<task_id>", "GET", "400") == 1
    assert requests(UNMATCHED_ROUTE, "GET", "404") == 1
    assert value(m, "dtq_http_request_duration_seconds_count",
                 route="/api/v1/tasks", method="POST") == 6  # fmt: skip

    # the writer
    commits = value(m, "dtq_writer_commit_batch_size_count")
    assert commits > 0
    assert value(m, "dtq_writer_commit_batch_size_sum") >= commits
    assert value(m, "dtq_writer_commit_duration_seconds_count") == commits
    assert svc.queue.store.stats.commits >= commits

    assert ("dtq_build_info", frozenset({("version", "1.0.0")})) in m
    assert any(name == "process_cpu_seconds_total" for name, _ in m)

    # /metrics counts itself, from the next scrape on
    again = await scrape(client)
    assert value(again, "dtq_http_requests_total", route="/metrics", method="GET",
                 status="200") == 1  # fmt: skip


async def test_lease_expiry_and_leases_held(
    client: Client, svc: Services, mock_clock: trio.testing.MockClock
) -> None:
    auth = await login(client)
    await call(client, "POST", "/api/v1/tasks", auth, {"name": "slow", "retry_count": 1})
    await call(client, "POST", "/api/v1/tasks/lease", auth,
               {"worker_id": "w1", "wait": 0, "lease_seconds": 5})  # fmt: skip
    m = await scrape(client)
    assert value(m, "dtq_leases_held") == 1
    assert value(m, "dtq_tasks", status="running") == 1
    mock_clock.jump(6)
    await settle(svc)
    m = await scrape(client)
    assert value(m, "dtq_lease_expiries_total") == 1
    assert value(m, "dtq_leases_held") == 0
    assert value(m, "dtq_task_retries_total", queue="default") == 1
    assert value(m, "dtq_ready_tasks", queue="default") == 1  # expired leases retry at once


async def test_long_polls_waiting(client: Client, svc: Services) -> None:
    auth = await login(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, client, "POST", "/api/v1/tasks/lease", auth,
                           {"worker_id": "w1", "wait": 30})  # fmt: skip
        await trio.testing.wait_all_tasks_blocked()
        assert value(await scrape(client), "dtq_longpolls_waiting") == 1
        await call(client, "POST", "/api/v1/tasks", auth, {"name": "wake"})
    m = await scrape(client)
    assert value(m, "dtq_longpolls_waiting") == 0
    assert value(m, "dtq_task_queue_wait_seconds_count", queue="default") == 1


async def test_metrics_open_by_default_and_never_rate_limited(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_per_minute=2, rate_limit_per_hour=2)
    async with open_services(settings) as svc:
        client = create_app(svc).test_client()
        for _ in range(5):
            await scrape(client)
        # the API itself is limited: anonymous callers share one bucket
        statuses = [(await client.get("/api/v1/tasks")).status_code for _ in range(4)]
        assert 429 in statuses


async def test_metrics_can_require_auth(tmp_path: Path) -> None:
    async with open_services(make_settings(tmp_path, metrics_require_auth=True)) as svc:
        client = create_app(svc).test_client()
        reply = await client.get("/metrics")
        assert reply.status_code == 401
        body = await reply.get_json()
        assert body["status"] == "error"
        assert body["error"]["code"] == "UNAUTHORIZED"
        _, worker_key = await svc.accounts.create_api_key(
            ApiKeyCreate(name="w", role=Role.WORKER), "test"
        )
        reply = await client.get("/metrics", headers={"X-API-Key": worker_key})
        assert reply.status_code == 403
        assert (await reply.get_json())["error"]["code"] == "FORBIDDEN"
        _, viewer_key = await svc.accounts.create_api_key(
            ApiKeyCreate(name="v", role=Role.VIEWER), "test"
        )
        await scrape(client, {"X-API-Key": viewer_key})
        await scrape(client, await login(client))


async def test_openmetrics_when_asked(client: Client) -> None:
    reply = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await reply.get_data(as_text=True)).endswith("# EOF\n")


async def test_webhook_deliveries(client: Client, svc: Services) -> None:
    assert svc.metrics is not None
    svc.metrics.webhook_delivery("delivered")
    svc.metrics.webhook_delivery("delivered")
    svc.metrics.webhook_delivery("failed")
    m = await scrape(client)
    assert value(m, "dtq_webhook_deliveries_total", outcome="delivered") == 2
    assert value(m, "dtq_webhook_deliveries_total", outcome="failed") == 1


async def test_checkpoints_of_the_write_ahead_log(client: Client, svc: Services) -> None:
    """The LMDB store's background checkpoints are counted, with their duration."""
    store: Any = svc.queue.store
    writer = store.writer

    async def quiet() -> None:
        """No checkpoint starts (none is due by size here) and none is under way."""
        writer.checkpoint_interval_s = math.inf
        with trio.fail_after(5):
            await store.write(lambda tx: None)  # after a checkpoint's start, if one is starting
            while (under_way := writer._checkpointing) is not None:
                await under_way.wait()

    await quiet()  # (the server's own first writes may have started one)
    seen: list[bool] = []
    one = trio.Event()

    def heard(ok: bool, seconds: float) -> None:
        seen.append(ok)
        one.set()

    store.checkpoint_hooks.append(heard)
    before = (await scrape(client)).get(
        ("dtq_storage_checkpoints_total", frozenset({("outcome", "ok")})), 0.0
    )
    writer.checkpoint_interval_s = 0.0  # one after every commit
    await svc.queue.create(TaskCreate(name="checkpointed"))
    with trio.fail_after(5):  # its sync runs in a thread
        await one.wait()
    await quiet()  # so the scrape below and `seen` count the same checkpoints
    assert seen and all(seen)
    m = await scrape(client)
    ok = value(m, "dtq_storage_checkpoints_total", outcome="ok")
    assert ok == before + len(seen)
    assert value(m, "dtq_storage_checkpoint_duration_seconds_count") == ok


async def test_registry_is_per_app(svc: Services) -> None:
    assert svc.metrics is not None
    assert svc.metrics.registry is not prometheus_client.REGISTRY
    global_names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("dtq_") for name in global_names)
    Metrics(svc.queue)  # a second one beside it registers fine


async def test_queue_labels_are_capped(svc: Services) -> None:
    metrics = Metrics(svc.queue, max_queues=2)
    for queue in ("a", "b", "c", "d"):
        metrics.on_task("task.created", make_task(queue=queue))
    m = parse((await metrics.render()).decode())
    assert value(m, "dtq_task_events_total", event="created", queue="a") == 1
    assert value(m, "dtq_task_events_total", event="created", queue=OTHER_QUEUE) == 2
    assert not any(dict(labels).get("queue") == "c" for _, labels in m)


def test_openapi_documents_metrics() -> None:
    op = build_openapi()["paths"]["/metrics"]["get"]
    assert "text/plain" in op["responses"]["200"]["content"]
    assert "security" not in op


# -- queue wait ----------------------------------------------------------------------------


def make_task(**kw: Any) -> Task:
    base: dict[str, Any] = dict(
        id="t1", name="n", description=None, priority=Priority.MEDIUM, status=TaskStatus.PENDING,
        queue="q", payload={}, retry_count=0, timeout=60.0, created_at=100.0,
        updated_at=100.0, seq=1,
    )  # fmt: skip
    base.update(kw)
    return Task(**base)


def leased(task: Task, at: float) -> Task:
    return msgspec.structs.replace(
        task, status=TaskStatus.RUNNING, attempts=task.attempts + 1, started_at=at,
        updated_at=at, run_at=None,
    )  # fmt: skip


def test_queue_wait_of_a_plain_task_is_from_creation() -> None:
    ready = ReadySince()
    task = make_task()
    ready.became_ready(task)
    assert len(ready) == 0  # nothing kept for the common case
    assert ready.wait(leased(task, 107.0)) == 7.0


def test_queue_wait_of_a_delayed_task_is_from_run_at() -> None:
    ready = ReadySince()
    task = make_task(run_at=150.0)
    ready.became_ready(task)
    assert ready.wait(leased(task, 151.5)) == 1.5
    assert len(ready) == 0


def test_queue_wait_after_a_retry_or_release_is_from_going_back_to_pending() -> None:
    ready = ReadySince()
    retried = make_task(attempts=1, updated_at=200.0, run_at=204.0)  # backoff
    ready.became_ready(retried)
    assert ready.wait(leased(retried, 205.0)) == 1.0
    released = make_task(attempts=0, updated_at=300.0)
    ready.became_ready(released)
    assert ready.wait(leased(released, 302.0)) == 2.0


def test_queue_wait_unknown_after_restart_is_not_observed() -> None:
    ready = ReadySince()
    ready.prime([("t1", None), ("t2", 500.0)])
    assert ready.wait(leased(make_task(id="t1", attempts=1), 400.0)) is None
    assert ready.wait(leased(make_task(id="t2"), 503.0)) == 3.0


async def test_queue_wait_forgets_cancelled_tasks(svc: Services) -> None:
    metrics = Metrics(svc.queue)
    task = make_task(run_at=150.0)
    metrics.on_task("task.created", task)
    assert len(metrics.ready_since) == 1
    metrics.on_task("task.cancelled", msgspec.structs.replace(task, status=TaskStatus.CANCELLED))
    assert len(metrics.ready_since) == 0


async def test_queue_wait_of_delayed_task_survives_restart(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    settings = make_settings(tmp_path)
    async with open_services(settings) as svc:
        await svc.queue.create(TaskCreate(name="later", delay=60))
    async with open_services(settings) as svc:
        assert svc.metrics is not None
        assert len(svc.metrics.ready_since) == 1  # primed from the pending index
        mock_clock.jump(70)
        await settle(svc)
        assert len(await svc.queue.lease(LeaseRequest(worker_id="w", wait=0))) == 1
        m = parse((await svc.metrics.render()).decode())
        assert value(m, "dtq_task_queue_wait_seconds_count", queue="default") == 1
        assert value(m, "dtq_task_queue_wait_seconds_sum", queue="default") < 20


async def settle(svc: Services) -> None:
    """Let the reaper and the writer finish what the clock jump made due."""
    for _ in range(3):
        await trio.testing.wait_all_tasks_blocked()
        await svc.queue.store.write(lambda tx: None)
    await trio.testing.wait_all_tasks_blocked()
