"""Analytics: the guide's dashboard, trends and export (JSON and CSV)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest
import trio.testing

from .helpers import Client, create_task, error_of, lease_one, ok, success_body

GUIDE_DASHBOARD_FIELDS = {
    "total_tasks",
    "completed_tasks",
    "failed_tasks",
    "pending_tasks",
    "completion_rate",
    "average_duration",
    "workers_active",
    "workers_total",
}
CSV_HEADER = [
    "date",
    "created",
    "completed",
    "failed",
    "retried",
    "cancelled",
    "completion_rate",
    "error_rate",
    "avg_duration",
]


async def run_some_tasks(admin: Client, clock: trio.testing.MockClock) -> None:
    """4 tasks: one completed in 4 s, one completed in 2 s, one failed, one pending; 1 worker."""
    ok(await admin.post("/api/v1/workers/heartbeat", {"worker_id": "w1", "max_capacity": 2}))
    for name in ("a", "b", "c", "d"):
        await create_task(admin, name)
    a = await lease_one(admin, "w1")
    b = await lease_one(admin, "w1")
    c = await lease_one(admin, "w1")
    clock.jump(2)
    ok(await admin.post(f"/api/v1/tasks/{b['id']}/complete", {"lease_id": b["lease"]["id"]}))
    clock.jump(2)
    ok(await admin.post(f"/api/v1/tasks/{a['id']}/complete", {"lease_id": a["lease"]["id"]}))
    ok(await admin.post(f"/api/v1/tasks/{c['id']}/fail", {"lease_id": c["lease"]["id"]}))


def today() -> date:
    return datetime.now(UTC).date()


async def test_dashboard_empty(admin: Client) -> None:
    body = success_body(await admin.get("/api/v1/analytics/dashboard"))
    data = body["data"]
    assert set(data) >= GUIDE_DASHBOARD_FIELDS
    assert all(data[f] == 0 for f in GUIDE_DASHBOARD_FIELDS)


async def test_dashboard(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    await run_some_tasks(admin, mock_clock)
    body = success_body(await admin.get("/api/v1/analytics/dashboard"))
    data = body["data"]
    assert {f: data[f] for f in GUIDE_DASHBOARD_FIELDS} == {
        "total_tasks": 4,
        "completed_tasks": 2,
        "failed_tasks": 1,
        "pending_tasks": 1,
        "completion_rate": 0.5,
        "average_duration": 3.0,
        "workers_active": 1,
        "workers_total": 1,
    }
    assert data["running_tasks"] == 0
    assert data["cancelled_tasks"] == 0
    # the guide's example reads the metrics at the top level of the body, too
    for field in GUIDE_DASHBOARD_FIELDS:
        assert body[field] == data[field], field


async def test_dashboard_follows_cancel_and_delete(admin: Client) -> None:
    a = await create_task(admin)
    b = await create_task(admin)
    ok(await admin.put(f"/api/v1/tasks/{a['id']}", {"status": "cancelled"}))
    assert (await admin.delete(f"/api/v1/tasks/{b['id']}")).status == 204
    data = ok(await admin.get("/api/v1/analytics/dashboard"))
    assert data["total_tasks"] == 1
    assert data["pending_tasks"] == 0
    assert data["cancelled_tasks"] == 1


async def test_trends_default_is_7_days(admin: Client) -> None:
    data = ok(await admin.get("/api/v1/analytics/trends"))
    assert data["days"] == 7
    series = data["series"]
    assert len(series) == 7
    dates = [date.fromisoformat(p["date"]) for p in series]
    assert dates == [today() - timedelta(days=6 - i) for i in range(7)]
    for point in series:
        assert set(point) == {
            "date", "completion_rate", "avg_duration", "error_rate", "completed", "failed"
        }  # fmt: skip


async def test_trends_days(admin: Client) -> None:
    for days in (1, 2, 30, 365):
        data = ok(await admin.get(f"/api/v1/analytics/trends?days={days}"))
        assert data["days"] == days
        assert len(data["series"]) == days
        assert data["series"][-1]["date"] == today().isoformat()


async def test_trends_bad_days(admin: Client) -> None:
    for days in ("0", "366", "-1", "seven", "1.5", ""):
        reply = await admin.get(f"/api/v1/analytics/trends?days={days}")
        assert reply.status == 400, (days, reply)
        error_of(reply, 400, "INVALID_REQUEST", field="days")


async def test_trends_values(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    await run_some_tasks(admin, mock_clock)
    data = ok(await admin.get("/api/v1/analytics/trends?days=2"))
    assert data["series"][0] == {
        "date": (today() - timedelta(days=1)).isoformat(),
        "completion_rate": 0.0,
        "avg_duration": 0.0,
        "error_rate": 0.0,
        "completed": 0,
        "failed": 0,
    }
    point = data["series"][1]
    assert (point["completed"], point["failed"]) == (2, 1)  # the throughput behind the rates
    assert point["date"] == today().isoformat()
    assert point["completion_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert point["error_rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert point["avg_duration"] == 3.0


async def test_trends_one_metric(admin: Client) -> None:
    for metric in ("completion_rate", "avg_duration", "error_rate"):
        data = ok(await admin.get(f"/api/v1/analytics/trends?metric={metric}&days=3"))
        assert data["metric"] == metric
        assert len(data["series"]) == 3
        for point in data["series"]:
            assert set(point) == {"date", metric, "completed", "failed"}


async def test_trends_bad_metric(admin: Client) -> None:
    for metric in ("throughput", "", "COMPLETION_RATE"):
        reply = await admin.get(f"/api/v1/analytics/trends?metric={metric}")
        assert reply.status == 400, (metric, reply)
        error_of(reply, 400, "INVALID_REQUEST", field="metric")


async def test_trends_unknown_parameter(admin: Client) -> None:
    error_of(await admin.get("/api/v1/analytics/trends?day=3"), 400, "INVALID_REQUEST")


async def test_export_json(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    await run_some_tasks(admin, mock_clock)
    reply = await admin.get("/api/v1/analytics/export", headers={"Accept": "application/json"})
    data = ok(reply)
    assert set(data["dashboard"]) >= GUIDE_DASHBOARD_FIELDS
    assert data["dashboard"]["total_tasks"] == 4
    rows = data["daily"]
    assert len(rows) == data["days"]
    last = rows[-1]
    assert last["date"] == today().isoformat()
    assert (last["created"], last["completed"], last["failed"]) == (4, 2, 1)
    assert set(CSV_HEADER) <= set(last)


async def test_export_json_is_the_default(admin: Client) -> None:
    reply = await admin.get("/api/v1/analytics/export")
    assert "daily" in ok(reply)


async def test_export_csv(admin: Client, mock_clock: trio.testing.MockClock) -> None:
    await run_some_tasks(admin, mock_clock)
    reply = await admin.get("/api/v1/analytics/export?days=3", headers={"Accept": "text/csv"})
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(reply.body.decode())))
    assert rows[0] == CSV_HEADER
    assert len(rows) == 1 + 3  # header + one row per day
    assert [r[0] for r in rows[1:]] == [
        (today() - timedelta(days=2 - i)).isoformat() for i in range(3)
    ]
    last = dict(zip(CSV_HEADER, rows[-1], strict=True))
    assert (last["created"], last["completed"], last["failed"]) == ("4", "2", "1")
    assert float(last["avg_duration"]) == 3.0
    assert rows[1][1:] == ["0", "0", "0", "0", "0", "0.0", "0.0", "0.0"]
    # X-Request-ID and rate-limit headers work the same on a streamed body
    assert reply.headers["X-Request-ID"]


async def test_export_csv_default_days(admin: Client) -> None:
    reply = await admin.get("/api/v1/analytics/export", headers={"Accept": "text/csv"})
    rows = list(csv.reader(io.StringIO(reply.body.decode())))
    assert len(rows) == 1 + 30


async def test_export_format_parameter(admin: Client) -> None:
    reply = await admin.get("/api/v1/analytics/export?format=csv&days=1")
    assert reply.headers["Content-Type"].startswith("text/csv")
    error_of(
        await admin.get("/api/v1/analytics/export?format=xml"),
        400,
        "INVALID_REQUEST",
        field="format",
    )
    error_of(
        await admin.get("/api/v1/analytics/export?days=400"), 400, "INVALID_REQUEST", field="days"
    )
