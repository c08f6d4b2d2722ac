"""`serve(settings)`: the whole server in one trio nursery (core + HTTP), embeddable in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
import trio

from dtq.accounts import Accounts
from dtq.net.api import Services
from dtq.net.app import create_app
from dtq.net.events import EventBus
from dtq.net.serving import serve_app, shutdown_on_signals
from dtq.ratelimit import RateLimiter
from dtq.runtime import open_queue
from dtq.settings import Settings

log = structlog.get_logger("dtq.server")


@asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Core, accounts and rate limiter, with the admin user bootstrapped."""
    async with open_queue(settings) as queue:
        accounts = Accounts(queue.store, queue.writer, queue.clock, settings)
        generated = await accounts.bootstrap_admin(settings.admin_password)
        if generated is not None:
            # DESIGN.md: without DTQ_ADMIN_PASSWORD a random one is shown once, at first start.
            log.warning(
                "created the admin user with a generated password; it is shown only this once",
                username="admin",
                password=generated,
            )
        bus = EventBus()
        queue.task_listeners.append(bus.on_task)
        queue.worker_listeners.append(bus.on_worker)
        try:
            yield Services(queue, accounts, RateLimiter(), settings, bus)
        finally:
            bus.close()


async def serve(
    settings: Settings,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run until `shutdown_trigger` returns (default: SIGTERM/SIGINT), then shut down cleanly.

    Reports the bound (host, port) through `task_status`, so tests can bind port 0.
    """
    async with open_services(settings) as services:
        trigger = shutdown_trigger or shutdown_on_signals()

        async def shutdown() -> None:
            await trigger()
            log.info("shutting down")
            services.queue.begin_shutdown()  # open long-polls answer now
            services.bus.close()  # WebSockets close with 1001

        app = create_app(services)
        await serve_app(app, settings, task_status=task_status, shutdown_trigger=shutdown)
