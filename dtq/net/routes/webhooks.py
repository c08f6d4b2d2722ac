"""Webhooks: register, list, delete, and see each delivery's attempts and outcome."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from dtq.core.auth import Permission
from dtq.core.webhooks.delivery import WebhookService
from dtq.core.webhooks.outbox import Delivery, DeliveryStatus, Webhook, WebhookCreate
from dtq.models import Skip
from dtq.net.envelope import iso, pagination, success
from dtq.net.events import Event
from dtq.net.routing import Api, Call, RouteSpec, Services, no_content, respond

TAG = "Webhooks"
P = "/api/v1/webhooks"
ROLES = ("admin", "operator")
WEBHOOK_ID = (("webhook_id", uuid.UUID),)

_encode = msgspec.json.Encoder().encode


class WebhookOut(Struct, omit_defaults=True):
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: str | None
    created_by: str | None
    secret: str | None = None  # only in the response that creates it


class AttemptOut(Struct):
    number: int
    started_at: str | None
    finished_at: str | None
    duration_ms: float
    status_code: int | None
    error: str | None


class DeliveryOut(Struct):
    id: str
    webhook_id: str
    event: str
    task_id: str | None  # a task.* event's task; null for a queue.* event
    queue: str | None  # a queue.* event's queue; null for a task.* event
    status: str
    attempts: int
    created_at: str | None
    next_attempt_at: str | None
    completed_at: str | None
    last_status_code: int | None
    last_error: str | None
    history: list[AttemptOut]


class DeliveriesQuery(Struct, forbid_unknown_fields=True, kw_only=True):
    status: DeliveryStatus | None = None
    skip: Skip = 0
    limit: Annotated[int, Meta(ge=1, le=100)] = 50


def webhook_out(hook: Webhook, *, with_secret: bool = False) -> WebhookOut:
    return WebhookOut(hook.id, hook.url, hook.events, hook.description, iso(hook.created_at),
                      hook.created_by, hook.secret if with_secret else None)  # fmt: skip


def delivery_out(d: Delivery) -> DeliveryOut:
    last = d.attempts[-1] if d.attempts else None
    history = [
        AttemptOut(i, iso(a.started_at), iso(a.finished_at),
                   round(max(a.finished_at - a.started_at, 0.0) * 1000, 3), a.status_code, a.error)
        for i, a in enumerate(d.attempts, 1)
    ]  # fmt: skip
    return DeliveryOut(
        id=d.id,
        webhook_id=d.webhook_id,
        event=d.event,
        task_id=d.task.id if d.task is not None else None,
        queue=d.queue.name if d.queue is not None else None,
        status=d.status.value,
        attempts=len(d.attempts),
        created_at=iso(d.created_at),
        next_attempt_at=iso(d.next_attempt_at),
        completed_at=iso(d.completed_at),
        last_status_code=last.status_code if last else None,
        last_error=last.error if last else None,
        history=history,
    )


def delivery_body(d: Delivery) -> bytes:
    """What a receiver gets: the event as `/ws/tasks` sends it (`task`, or `queue` for a
    queue.* event), plus `delivery_id`."""
    body = Event(d.event, task=d.task, config=d.queue).to_dict()
    body["delivery_id"] = d.id
    return _encode(body)


def _service(services: Services) -> WebhookService:
    if services.webhooks is None:
        raise RuntimeError("webhooks are not running in this server")
    return services.webhooks


def register(api: Api) -> None:
    services = api.services  # `webhooks` is read per request: None when only documenting

    @api.route(
        RouteSpec("POST", P, "Register a webhook", TAG, "create_webhook", body=WebhookCreate,
                  response=WebhookOut, status=201, errors=(409,), roles=ROLES,
                  description="Deliveries are POSTed as JSON (`event`, `task`, `timestamp`, "
                  "`delivery_id`; a `queue.paused`, `queue.resumed` or `queue.updated` event "
                  "carries `queue` (`name`, `paused`, the limits, `updated_at`) in place of "
                  "`task`) with `X-DTQ-Signature: sha256=<hex HMAC-SHA256 of the body "
                  "with the secret>`, `X-DTQ-Event` and `X-DTQ-Delivery`. Anything but a 2xx "
                  "within the timeout is retried with exponential backoff up to a limit. "
                  "Without `secret` one is generated; it is shown only in this response. "
                  '`events` lists event kinds or `"*"` for all (task and queue events). '
                  "The URL must be http or https without credentials (`user:pw@`) and its host "
                  "must resolve to public addresses only: loopback, private (RFC 1918, "
                  "100.64.0.0/10), link-local, unique-local, multicast, unspecified, reserved "
                  "and cloud metadata addresses, in any notation, are refused with 400 "
                  "(`details.field: \"url\"`), as is a host that does not resolve within 5 s. "
                  "Every delivery checks again the address it connects to (a name that later "
                  "resolves elsewhere gains nothing) and records a refused one as a failed "
                  "attempt. Redirects are not followed: a 3xx is a failed attempt. "
                  "For local setups, `DTQ_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true` lifts the "
                  "address rules (not the scheme and credential ones)."),
        Permission.WEBHOOKS,
    )  # fmt: skip
    async def create_webhook(call: Call) -> Any:
        hook = await _service(services).create(call.body, call.principal.subject)
        return respond(success(webhook_out(hook, with_secret=True)), 201)

    @api.route(
        RouteSpec("GET", P, "List webhooks", TAG, "list_webhooks", response=list[WebhookOut],
                  roles=ROLES),
        Permission.WEBHOOKS,
    )  # fmt: skip
    async def list_webhooks(call: Call) -> Any:
        return respond(success([webhook_out(h) for h in _service(services).registered()]))

    @api.route(
        RouteSpec("GET", f"{P}/{{webhook_id}}", "Get a webhook", TAG, "get_webhook",
                  response=WebhookOut, errors=(404,), roles=ROLES, path_types=WEBHOOK_ID),
        Permission.WEBHOOKS,
    )  # fmt: skip
    async def get_webhook(call: Call) -> Any:
        return respond(success(webhook_out(_service(services).get(call.params["webhook_id"]))))

    @api.route(
        RouteSpec("DELETE", f"{P}/{{webhook_id}}", "Delete a webhook", TAG, "delete_webhook",
                  status=204, errors=(404,), roles=ROLES, path_types=WEBHOOK_ID,
                  description="No delivery is sent for it any more; its delivery history goes."),
        Permission.WEBHOOKS,
    )  # fmt: skip
    async def delete_webhook(call: Call) -> Any:
        await _service(services).delete(call.params["webhook_id"])
        return no_content()

    @api.route(
        RouteSpec("GET", f"{P}/{{webhook_id}}/deliveries", "List a webhook's deliveries", TAG,
                  "list_webhook_deliveries", query=DeliveriesQuery, response=list[DeliveryOut],
                  paginated=True, errors=(404,), roles=ROLES, path_types=WEBHOOK_ID,
                  description="Newest first, each with every attempt (time, status code or "
                  "error). `pending` ones are owed and will be tried again at "
                  "`next_attempt_at`."),
        Permission.WEBHOOKS,
    )  # fmt: skip
    async def list_webhook_deliveries(call: Call) -> Any:
        q: DeliveriesQuery = call.query
        rows, total = await _service(services).deliveries(
            call.params["webhook_id"], q.status, q.skip, q.limit
        )
        return respond(
            success([delivery_out(d) for d in rows], pagination=pagination(q.skip, q.limit, total))
        )
