"""Analytics: dashboard (O(1) from counters), daily trends, export as JSON or CSV."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from msgspec import Meta, Struct
from quart import current_app, request

from dtq.core.auth import Permission
from dtq.models import Dashboard
from dtq.net.envelope import now_iso, success
from dtq.net.routing import Api, Call, RouteSpec, respond

TAG = "Analytics"
P = "/api/v1/analytics"
Days = Annotated[int, Meta(ge=1, le=365)]
CSV_COLUMNS = (
    "date", "created", "completed", "failed", "retried", "cancelled",
    "completion_rate", "error_rate", "avg_duration",
)  # fmt: skip


class TrendsQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    days: Days = 7
    metric: Annotated[str, Meta(pattern="^(completion_rate|avg_duration|error_rate)$")] | None = (
        None
    )


class ExportQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    days: Days = 30
    format: Annotated[str, Meta(pattern="^(json|csv)$")] | None = None


class TrendPoint(Struct):
    date: str
    completion_rate: float | None = None
    avg_duration: float | None = None
    error_rate: float | None = None
    completed: int = 0  # the day's finished tasks (the throughput), whatever the metric
    failed: int = 0


class DailyRow(Struct):
    """One UTC day (the CSV has the same columns)."""

    date: str
    created: int
    completed: int
    failed: int
    retried: int
    cancelled: int
    completion_rate: float
    error_rate: float
    avg_duration: float


class Export(Struct):
    generated_at: str
    days: int
    dashboard: Dashboard
    daily: list[DailyRow]


class Trends(Struct):
    days: int
    metric: str | None
    series: list[TrendPoint]


def register(api: Api) -> None:
    queue = api.services.queue

    @api.route(
        RouteSpec("GET", f"{P}/dashboard", "Dashboard metrics", TAG, "dashboard",
                  response=Dashboard,
                  description="The metrics are in `data` and, as in the API guide's example, "
                  "also at the top level of the body."),
        Permission.ANALYTICS_READ,
    )  # fmt: skip
    async def dashboard(call: Call) -> Any:
        d = await queue.dashboard()
        fields = {f: getattr(d, f) for f in d.__struct_fields__}
        return respond(success(d, **fields))

    @api.route(
        RouteSpec("GET", f"{P}/trends", "Daily performance trends", TAG, "trends",
                  query=TrendsQuery, response=Trends),
        Permission.ANALYTICS_READ,
    )  # fmt: skip
    async def trends(call: Call) -> Any:
        q: TrendsQuery = call.query
        return respond(success(await queue.trends(q.days, q.metric)))

    @api.route(
        RouteSpec("GET", f"{P}/export", "Export daily analytics", TAG, "export",
                  query=ExportQuery, response=Export,
                  content_types=("application/json", "text/csv"),
                  description="`Accept: text/csv` (or `format=csv`) streams CSV rows, one per "
                  "day; otherwise JSON with the dashboard and the daily rows."),
        Permission.ANALYTICS_READ,
    )  # fmt: skip
    async def export(call: Call) -> Any:
        q: ExportQuery = call.query
        rows = await queue.daily(q.days)
        wants_csv = q.format == "csv" or (
            q.format is None and request.accept_mimetypes.best_match(
                ["application/json", "text/csv"], default="application/json"
            ) == "text/csv"
        )  # fmt: skip
        if not wants_csv:
            return respond(
                success({"generated_at": now_iso(), "days": q.days,
                         "dashboard": await queue.dashboard(), "daily": rows})
            )  # fmt: skip

        async def stream() -> AsyncIterator[bytes]:
            yield (",".join(CSV_COLUMNS) + "\r\n").encode()
            for row in rows:
                yield (",".join(_csv_cell(row[c]) for c in CSV_COLUMNS) + "\r\n").encode()

        response = current_app.response_class(stream(), status=200, content_type="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="analytics-export.csv"'
        return response


def _csv_cell(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
