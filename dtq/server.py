"""The composition root: picks the store, builds core and net, runs them in one trio nursery.

`serve(settings)` is the whole server, embeddable in tests; `open_queue` / `open_writer` open the
core alone (tests, offline command-line tools)."""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import structlog
import trio

from dtq.clock import Clock, ScaledClock, TrioClock
from dtq.core.accounts import Accounts
from dtq.core.ratelimit import RateLimiter
from dtq.core.reaper import run_reaper
from dtq.core.retention import run_retention
from dtq.core.service import TaskQueue
from dtq.core.shared_ratelimit import SharedRateLimiter
from dtq.core.webhooks.delivery import WebhookService
from dtq.core.webhooks.outbox import Outbox
from dtq.net.app import create_app
from dtq.net.banner import StartupReport
from dtq.net.events import EventBus, ServerRelay
from dtq.net.metrics import Metrics
from dtq.net.protocol import (
    Hub,
    protocol_port_to_bind,
    register_session_websocket,
    serve_protocol,
)
from dtq.net.routes.webhooks import delivery_body
from dtq.net.routing import Services
from dtq.net.serve import BoundAddress, serve_app, shutdown_on_signals
from dtq.settings import MEMORY_STORE, Durability, Settings
from dtq.storage.base import Store

log = structlog.get_logger("dtq.server")
PG_SCHEMES = ("postgresql://", "postgres://")


def store_problem(settings: Settings) -> str | None:
    """Why `settings.store` names no store this server can open (None: it can)."""
    if settings.store.startswith(PG_SCHEMES):
        missing = [m for m in ("psycopg", "psycopg_pool") if importlib.util.find_spec(m) is None]
        if missing:
            return (
                f"the PostgreSQL store needs {' and '.join(missing)}: "
                "pip install 'dtq[postgres]' (or pip install 'psycopg[binary]' psycopg-pool)"
            )
        return None
    if settings.store in ("", MEMORY_STORE):
        return None
    scheme = settings.store.partition("://")[0] if "://" in settings.store else settings.store
    return (
        f"unknown store {settings.store!r} (scheme {scheme!r}): use memory://, "
        "postgresql://user:pass@host:5432/db, or leave --store / DTQ_STORE empty for LMDB in --data-dir"
    )


def make_store(settings: Settings, clock: Clock | None = None) -> Store:
    """The backend `settings.store` names (see `store_problem` for what it accepts)."""
    if (problem := store_problem(settings)) is not None:
        raise ValueError(problem)
    if settings.store == MEMORY_STORE:
        from dtq.storage.memory import MemoryStore

        log.warning(
            "in-memory store: nothing survives a stop",
            store=MEMORY_STORE,
            hint="tasks, users, API keys and webhooks are lost when the server stops",
        )
        return MemoryStore(clock)
    if settings.store.startswith(PG_SCHEMES):
        # several servers share it; its clock is the database's (`StoreTxn.now`)
        from dtq.storage.postgres.notify import notify_enabled
        from dtq.storage.postgres.store import PostgresStore

        return PostgresStore(settings.store, notify=notify_enabled(settings.pg_notify))
    from dtq.storage.lmdb.store import LmdbStore

    return LmdbStore(
        settings.data_dir,
        fsync=settings.durability == Durability.FSYNC,
        map_size_bytes=settings.map_size_bytes,
        clock=clock,
    )


@asynccontextmanager
async def open_store(settings: Settings, clock: Clock | None = None) -> AsyncIterator[Store]:
    """The store, taking writes, until the block exits (queued writes are flushed first)."""
    store = make_store(settings, clock)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            try:
                yield store
            finally:
                with trio.CancelScope(shield=True):
                    await store.aclose()
    finally:
        store.close()


def server_clock(settings: Settings) -> Clock:
    """The real clock; a test clock only in a test environment (`test` or `test-*`)."""
    testing = settings.env == "test" or settings.env.startswith("test-")
    if testing and (settings.test_clock_speed != 1.0 or settings.test_clock_start_s):
        return ScaledClock(settings.test_clock_speed, settings.test_clock_start_s)
    return TrioClock()


@asynccontextmanager
async def open_queue(
    settings: Settings,
    *,
    clock: Clock | None = None,
    on_open: Callable[[TaskQueue], Awaitable[None]] | None = None,
    store: Store | None = None,
) -> AsyncIterator[TaskQueue]:
    """The running core. On exit: long-polls answer, queued writes are flushed, the store
    closes.

    `await on_open(queue)` runs before the store takes its first write (e.g. to install a
    store hook that must see every change).
    """
    clock = clock or server_clock(settings)
    # `store`: one made by the caller (tests: a handle on a shared memory store), else settings'
    store = store if store is not None else make_store(settings, clock)
    try:
        queue = TaskQueue(store, clock, settings)
        await queue.rebuild()
        if on_open is not None:
            await on_open(queue)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            await queue.grant_restart_grace()
            await nursery.start(run_reaper, queue)
            nursery.start_soon(run_retention, queue)
            try:
                yield queue
            finally:
                queue.begin_shutdown()
                with trio.CancelScope(shield=True):
                    await store.aclose()  # flushes what is queued, then stops
                nursery.cancel_scope.cancel()  # the reaper
    finally:
        store.close()


@asynccontextmanager
async def open_writer(settings: Settings) -> AsyncIterator[Store]:
    """The store only (no reaper, no dispatcher): for command-line tools that change users or
    keys, safely even while a server runs on the same data directory."""
    async with open_store(settings, TrioClock()) as store:
        yield store


@asynccontextmanager
async def open_services(
    settings: Settings, *, report: StartupReport | None = None, store: Store | None = None
) -> AsyncIterator[Services]:
    """Core, accounts and rate limiter, with the admin user bootstrapped; the webhook
    delivery loop runs in a nursery of its own until the block exits.

    A generated admin password goes to `report` (by default: a file in the data directory).
    """
    report = report or StartupReport(settings, terminal=None)
    outbox = Outbox()  # installed before the first write, so it sees every task change

    async def on_open(queue: TaskQueue) -> None:
        await outbox.install(queue.store)
        queue.queues.config_sink = outbox.queue_sink  # queue.* deliveries, same transaction

    async with open_queue(settings, on_open=on_open, store=store) as queue:
        accounts = await Accounts.open(queue.store, queue.clock, settings)
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
        queue.queue_listeners.append(bus.on_queue)
        metrics = Metrics(queue)
        queue.task_listeners.append(metrics.on_task)
        queue.store.commit_hooks.append(metrics.on_commit)
        checkpoint_hooks = getattr(queue.store, "checkpoint_hooks", None)  # LMDB's write-ahead log
        if checkpoint_hooks is not None:
            checkpoint_hooks.append(metrics.on_checkpoint)
        webhooks = WebhookService(queue.store, queue.clock, settings, outbox,
                                  render=delivery_body)  # fmt: skip
        webhooks.outcome_listeners.append(metrics.webhook_delivery)
        async with trio.open_nursery() as nursery:
            await nursery.start(webhooks.run)
            if queue.store.shared and queue.store.changes is not None:
                relay = ServerRelay(bus, queue.store)  # live views see every server's events
                queue.task_listeners.append(relay.on_task)
                await nursery.start(relay.run)
            limiter = RateLimiter()
            if queue.store.shared:  # one budget per key across every server
                limiter = SharedRateLimiter(queue.store)
                await nursery.start(limiter.run, queue.clock)
            try:
                yield Services(queue, accounts, limiter, settings, bus, metrics,
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
    store: Store | None = None,
) -> None:
    """Run until `shutdown_trigger` returns (default: SIGTERM/SIGINT), then shut down cleanly.

    Reports the bound (host, port) through `task_status`, so tests can bind port 0. `report`
    announces the server once it listens (default: one log event; `dtq serve` prints a block
    on a terminal).
    """
    report = report or StartupReport(settings, terminal=None)
    async with open_services(settings, report=report, store=store) as services:
        trigger = shutdown_trigger or shutdown_on_signals()

        hub = Hub()  # the fast lane's connections (cancel notices, shutdown)
        services.queue.task_listeners.append(hub.on_task)

        async def shutdown() -> None:
            await trigger()
            log.info("shutting down")
            services.queue.begin_shutdown()  # open long-polls answer now
            services.bus.close()  # WebSockets close with 1001
            hub.close_all()  # fast-lane connections are told and closed

        app = create_app(services)
        register_session_websocket(app, services, hub)
        if freeze_gc:
            # Everything made so far (modules, app, the rebuilt queues) lives as long as the
            # process: keep the cyclic collector from rescanning it, which otherwise shows up
            # as pauses of tens of milliseconds in request latency.
            gc.collect()
            gc.freeze()
        async with trio.open_nursery() as nursery:
            protocol_url = None
            if (protocol_port := protocol_port_to_bind(settings)) is not None:
                lane: BoundAddress = await nursery.start(serve_protocol, services, hub,
                                                         protocol_port)  # fmt: skip
                app.config["DTQ_PROTOCOL_PORT"] = lane.port  # /health tells clients
                protocol_url = lane.url("tls" if settings.certfile else "tcp")

            async def serve_http(task_status: trio.TaskStatus[BoundAddress]) -> None:
                await serve_app(app, settings, shutdown_trigger=shutdown, task_status=task_status)
                nursery.cancel_scope.cancel()  # HTTP has stopped: so does the fast lane

            address: BoundAddress = await nursery.start(serve_http)
            report.started(address.port, protocol_url=protocol_url)
            task_status.started(address)
