"""`GET /metrics`: the Prometheus exposition of `dtq.net.metrics`, outside the API pipeline."""

from __future__ import annotations

from typing import Any

from quart import request

from dtq.core.auth import Permission
from dtq.net.metrics import PATH
from dtq.net.routing import RouteSpec, Services, principal_of, respond
from dtq.settings import Settings


def metrics_route_spec(settings: Settings) -> RouteSpec:
    auth = settings.metrics_require_auth
    return RouteSpec(
        "GET", PATH, "Prometheus metrics", "Monitoring", "metrics", envelope=False,
        content_types=("text/plain",), auth=auth, errors=(403,) if auth else (),
        description="Prometheus text exposition format (OpenMetrics when the `Accept` header "
        "asks for it). Open unless `metrics_require_auth` is set; then it needs a role with "
        "`analytics:read`. Not rate-limited.",
    )  # fmt: skip


def register_metrics_route(app: Any, services: Services) -> None:
    """`GET /metrics`, outside the API pipeline: never rate-limited."""
    metrics = services.metrics
    if metrics is None:
        return
    accounts = services.accounts
    require_auth = services.settings.metrics_require_auth

    async def prometheus_metrics() -> Any:
        if require_auth:
            (await principal_of(accounts)).require(Permission.ANALYTICS_READ)
        body, content_type = await metrics.exposition(request.headers.get("Accept"))
        return respond(body, 200, content_type)

    app.add_url_rule(PATH, "prometheus_metrics", prometheus_metrics, methods=["GET"])
