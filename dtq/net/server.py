"""`serve(settings)`: the whole server in one trio nursery (core + HTTP), embeddable in tests."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial

import structlog
import trio

from dtq.accounts import Accounts
from dtq.net.api import Services
from dtq.net.app import create_app
from dtq.net.banner import StartupReport
from dtq.net.events import EventBus
from dtq.net.metrics import Metrics
from dtq.net.routes.webhooks import delivery_body
from dtq.net.serving import BoundAddress, serve_app, shutdown_on_signals
from dtq.ratelimit import RateLimiter
from dtq.runtime import open_queue
from dtq.settings import Settings
from dtq.webhook_delivery import WebhookService
from dtq.webhooks import Outbox

log = structlog.get_logger("dtq.server")


@asynccontextmanager
async def open_services(
    settings: Settings, *, report: StartupReport | None = None
) -> AsyncIterator[Services]:
    """Core, accounts and rate limiter, with the admin user bootstrapped; the webhook
    delivery loop runs in a nursery of its own until the block exits.

    A generated admin password goes to `report` (by default: a file in the data directory).
    """
    report = report or StartupReport(settings, terminal=None)
    outbox = Outbox()  # installed before the first write, so it sees every task change
    async with open_queue(settings, on_open=lambda q: outbox.install(q.store)) as queue:
        accounts = Accounts(queue.store, queue.writer, queue.clock, settings)
        upgraded = await accounts.upgrade_records()
        if upgraded:
            log.info("gave user records from an older version an account id", users=upgraded)
        generated = await accounts.bootstrap_admin(settings.admin_password)
        if generated is not None:
            # DESIGN.md: without DTQ_ADMIN_PASSWORD a random one is made at first start; it is
            # shown once on a terminal, else kept in a 0600 file, never put in the logs.
            report.admin_password_generated(generated)
        bus = EventBus(settings.ws_buffer_events)
        queue.task_listeners.append(bus.on_task)
        queue.worker_listeners.append(bus.on_worker)
        metrics = Metrics(queue)
        queue.task_listeners.append(metrics.on_task)
        queue.writer.commit_hooks.append(metrics.on_commit)
        webhooks = WebhookService(queue.store, queue.writer, queue.clock, settings, outbox,
                                  render=delivery_body)  # fmt: skip
        webhooks.outcome_listeners.append(metrics.webhook_delivery)
        async with trio.open_nursery() as nursery:
            await nursery.start(webhooks.run)
            try:
                yield Services(queue, accounts, RateLimiter(), settings, bus, metrics,
                               webhooks=webhooks)  # fmt: skip
            finally:
                bus.close()
                nursery.cancel_scope.cancel()  # owed deliveries stay in storage for next time


async def serve(
    settings: Settings,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    freeze_gc: bool = False,
    report: StartupReport | None = None,
) -> None:
    """Run until `shutdown_trigger` returns (default: SIGTERM/SIGINT), then shut down cleanly.

    Reports the bound (host, port) through `task_status`, so tests can bind port 0. `report`
    announces the server once it listens (default: one log event; `dtq serve` prints a block
    on a terminal).
    """
    report = report or StartupReport(settings, terminal=None)
    async with open_services(settings, report=report) as services:
        trigger = shutdown_trigger or shutdown_on_signals()

        async def shutdown() -> None:
            await trigger()
            log.info("shutting down")
            services.queue.begin_shutdown()  # open long-polls answer now
            services.bus.close()  # WebSockets close with 1001

        app = create_app(services)
        if freeze_gc:
            # Everything made so far (modules, app, the rebuilt queues) lives as long as the
            # process: keep the cyclic collector from rescanning it, which otherwise shows up
            # as pauses of tens of milliseconds in request latency.
            gc.collect()
            gc.freeze()
        async with trio.open_nursery() as nursery:
            address: BoundAddress = await nursery.start(
                partial(serve_app, app, settings, shutdown_trigger=shutdown)
            )
            # The protocol port, once `dtq serve` opens one, goes in as `protocol_url=`.
            report.started(address.port)
            task_status.started(address)
