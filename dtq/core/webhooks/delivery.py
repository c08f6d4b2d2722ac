"""The webhook service: registration, and the loop that sends what the outbox owes.

Storage is the only source of truth: the loop reads the due index (`due_deliveries`), starts up
to `webhook_concurrency` attempts at once, and records each outcome as one small write op.
It never blocks the dispatcher or the writer: HTTP happens in its own tasks, outcomes go
through the group commit like any other write. After a restart it simply finds what is
still due. Pure decisions (signature, backoff, event kinds) live in `dtq.core.webhooks.outbox`.
"""

from __future__ import annotations

import math
import random
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import structlog
import trio

from dtq import __version__
from dtq.clock import Clock
from dtq.core.webhooks.outbox import (
    ALL_EVENTS,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Attempt,
    Delivery,
    DeliveryRef,
    DeliveryStatus,
    Outbox,
    Webhook,
    WebhookCreate,
    delete_webhook,
    drop_deliveries,
    put_webhook,
    record_attempt,
    sign,
)
from dtq.core.webhooks.targets import TargetRefused, check_url, refused_at_registration, url_host
from dtq.core.webhooks.transport import (
    REFUSED_ERROR,
    GuardedBackend,
    GuardedTransport,
    Resolver,
    check_registration,
    is_policy_refusal,
    resolve,
)
from dtq.errors import Conflict, InvalidRequest, NotFound, Unavailable
from dtq.retry import RetryPolicy
from dtq.settings import Settings
from dtq.storage.base import Store

log = structlog.get_logger("dtq.webhooks")

MAX_WEBHOOKS = 100
_CHUNK = 500  # deliveries removed per write op when purging or pruning
_MAX_RESPONSE_BYTES = 64 * 1024  # a reply up to this size is read (and dropped): keep-alive
_PRUNE_EVERY_S = 3600.0
_STORAGE_TROUBLE_PAUSE_S = 1.0
# Registration waits this long at most for the URL's host to resolve; a name that does not
# resolve (or not in time) is refused: it could not be checked, and could not be delivered to.
REGISTRATION_RESOLVE_S = 5.0
# Shared stores: one server sends (the holder of this lead); it renews at a third of the lead's
# length, so another takes over within LEAD_TTL_S of its death.
WEBHOOK_LEAD = "webhook-delivery"
LEAD_TTL_S = 10.0

Render = Callable[[Delivery], bytes]


@dataclass
class WebhookStats:
    attempts: int = 0
    failed_attempts: int = 0
    delivered: int = 0
    failed: int = 0  # given up after the last allowed attempt
    in_flight: int = 0


def parse_webhook_id(webhook_id: str) -> str:
    try:
        return str(uuid.UUID(webhook_id))
    except (ValueError, TypeError, AttributeError):
        raise InvalidRequest(
            "Invalid webhook ID", field="webhook_id", reason="Not a valid UUID"
        ) from None


def _small_body(reply: httpx.Response) -> bool:
    length = reply.headers.get("Content-Length", "")
    return length.isdigit() and int(length) <= _MAX_RESPONSE_BYTES


class WebhookService:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        settings: Settings,
        outbox: Outbox,
        *,
        render: Render,
        rand: Callable[[], float] = random.random,
        resolver: Resolver = resolve,
    ) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.outbox = outbox
        self.policy = RetryPolicy(settings.webhook_backoff_base_s, settings.webhook_backoff_max_s)
        self.stats = WebhookStats()
        self.outcome_listeners: list[Callable[[str], None]] = []  # e.g. the /metrics counter
        self._concurrency = max(1, settings.webhook_concurrency)
        self._max_attempts = max(1, settings.webhook_max_attempts)
        self._render = render
        self._rand = rand
        self._resolver = resolver
        self._in_flight: set[DeliveryRef] = set()
        self._wakeup = trio.Event()
        # A shared store: every server writes deliveries (the outbox), only the lead sends.
        self.server_id = uuid.uuid4().hex
        self.leading = not store.shared
        outbox.on_write = self._wake
        store.commit_hooks.append(outbox.after_commit)

    def _wake(self) -> None:
        self._wakeup.set()

    # -- registration ----------------------------------------------------------------------
    def registered(self) -> list[Webhook]:
        """Every webhook, oldest first."""
        return list(self.outbox.hooks.values())

    def get(self, webhook_id: str) -> Webhook:
        hook = self.outbox.hooks.get(parse_webhook_id(webhook_id))
        if hook is None:
            raise NotFound(f"webhook {webhook_id} not found", field="webhook_id",
                           reason="no such webhook")  # fmt: skip
        return hook

    async def create(self, body: WebhookCreate, created_by: str | None = None) -> Webhook:
        """Register; the secret is generated when not given (the caller shows it once)."""
        url = check_url(body.url)
        if not self.settings.webhook_allow_private_networks:
            await self._check_target(url)
        events: list[str] = list(dict.fromkeys(body.events))
        if ALL_EVENTS in events:
            events = [ALL_EVENTS]
        if len(self.outbox.hooks) >= MAX_WEBHOOKS:
            raise Conflict(f"at most {MAX_WEBHOOKS} webhooks can be registered",
                           reason="too many webhooks")  # fmt: skip
        hook = Webhook(
            id=str(uuid.uuid4()),
            url=url,
            events=events,
            secret=body.secret if body.secret is not None else secrets.token_urlsafe(32),
            created_at=self.clock.now(),
            description=body.description,
            created_by=created_by,
        )

        def on_commit(added: Webhook) -> None:
            self.outbox.set_hooks([*self.outbox.hooks.values(), added])

        created = await self.store.write(lambda tx: put_webhook(tx, hook), on_commit)
        # The URL itself can be a credential (many services put a token in it): log the host.
        log.info("webhook registered", webhook_id=hook.id, host=url_host(url),
                 events=events)  # fmt: skip
        return created

    async def _check_target(self, url: str) -> None:
        try:
            await check_registration(url, self._resolver, REGISTRATION_RESOLVE_S)
        except TargetRefused as exc:
            raise refused_at_registration(exc.reason) from None
        except OSError:
            raise InvalidRequest(
                f"url host {url_host(url)!r} could not be resolved: a webhook must name a host "
                "that resolves to a public address",
                field="url",
                reason="host does not resolve",
            ) from None

    async def delete(self, webhook_id: str) -> None:
        """Unregister: no new deliveries from the next commit on; history and owed ones go."""
        hook = self.get(webhook_id)

        def on_commit(found: bool) -> None:
            self.outbox.set_hooks(h for h in self.outbox.hooks.values() if h.id != hook.id)

        if not await self.store.write(lambda tx: delete_webhook(tx, hook.id), on_commit):
            raise NotFound(f"webhook {webhook_id} not found", field="webhook_id",
                           reason="no such webhook")  # fmt: skip
        # Nothing adds to its deliveries any more, so this terminates. Shielded: a caller that
        # goes away must not leave half a history behind with no webhook to reach it by.
        with trio.CancelScope(shield=True):
            while rows := (await self.store.list_deliveries(hook.id, limit=_CHUNK))[0]:
                await self.store.write(partial(drop_deliveries, refs=[d.ref for d in rows]))
        log.info("webhook deleted", webhook_id=hook.id)

    async def deliveries(
        self, webhook_id: str, status: DeliveryStatus | None, skip: int, limit: int
    ) -> tuple[list[Delivery], int]:
        """A webhook's deliveries, newest first, and how many match."""
        hook_id = self.get(webhook_id).id
        return await self.store.list_deliveries(hook_id, status=status, skip=skip, limit=limit)

    # -- delivery ----------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send what is due, wake on new deliveries or the next due time; until cancelled."""
        s = self.settings
        limits = httpx.Limits(
            max_connections=self._concurrency, max_keepalive_connections=self._concurrency
        )
        backend = GuardedBackend(self._resolver, allow_private=s.webhook_allow_private_networks)
        client = httpx.AsyncClient(
            transport=GuardedTransport(backend, limits),
            timeout=httpx.Timeout(s.webhook_timeout_s),
            follow_redirects=False,  # a 3xx is a failed attempt; its Location is never fetched
            trust_env=False,  # no proxy from the environment: a receiver is reached directly
            headers={"User-Agent": f"dtq-webhooks/{__version__}"},
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._prune_forever)
                if self.store.shared:
                    nursery.start_soon(self._follow_shared_store)
                task_status.started()
                while True:
                    self._wakeup = trio.Event()  # before looking, so no wake-up is missed
                    with trio.move_on_at(await self._start_due(nursery, client)):
                        await self._wakeup.wait()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                await client.aclose()

    async def _start_due(self, nursery: trio.Nursery, client: httpx.AsyncClient) -> float:
        """Start attempts for due deliveries (up to the free slots); the trio time to look
        again (inf: only when woken)."""
        free = self._concurrency - len(self._in_flight)
        if free <= 0 or not self.leading:
            return math.inf  # a finishing attempt (or taking the lead) wakes the loop
        now = self.clock.now()
        # In-flight deliveries are still in the index; past them there are `free` + 1 others.
        for when, ref in await self.store.due_deliveries(len(self._in_flight) + free + 1):
            if ref in self._in_flight:
                continue
            if when > now:
                return self.clock.to_trio(when)
            if free == 0:
                return math.inf
            free -= 1
            self._in_flight.add(ref)
            self.stats.in_flight = len(self._in_flight)
            nursery.start_soon(self._attempt, client, ref)
        return math.inf

    async def _attempt(self, client: httpx.AsyncClient, ref: DeliveryRef) -> None:
        try:
            delivery = await self.store.get_delivery(ref)
            if delivery is None:
                return
            if delivery.status != DeliveryStatus.PENDING:
                return
            hook = self.outbox.hooks.get(delivery.webhook_id)
            if hook is None:  # deleted; its deliveries are being dropped
                await self.store.write(lambda tx: drop_deliveries(tx, [ref]))
                return
            body = self._render(delivery)
            headers = {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: sign(hook.secret, body),
                EVENT_HEADER: delivery.event,
                DELIVERY_HEADER: delivery.id,
                "X-DTQ-Attempt": str(len(delivery.attempts) + 1),
            }
            started = self.clock.now()
            status_code, error = await self._post(client, hook.url, body, headers)
            attempt = Attempt(started_at=started, finished_at=self.clock.now(),
                              status_code=status_code, error=error)  # fmt: skip
            self.stats.attempts += 1
            if not attempt.ok:
                self.stats.failed_attempts += 1
            rand = self._rand()
            max_attempts = self._max_attempts
            await self.store.write(
                lambda tx: record_attempt(tx, ref, attempt, max_attempts=max_attempts,
                                          policy=self.policy, rand=rand),
                self._recorded,
            )  # fmt: skip
        except Unavailable as exc:  # storage trouble: the delivery stays due; retry later
            log.warning("webhook outcome not recorded", error=exc.message)
            await trio.sleep(_STORAGE_TROUBLE_PAUSE_S)
        finally:
            self._in_flight.discard(ref)
            self.stats.in_flight = len(self._in_flight)
            self._wakeup.set()

    def _recorded(self, delivery: Delivery | None) -> None:
        if delivery is None:
            return
        outcome = {DeliveryStatus.DELIVERED: "delivered", DeliveryStatus.FAILED: "failed"}.get(
            delivery.status, "retrying"
        )
        for listener in self.outcome_listeners:
            listener(outcome)
        if delivery.status == DeliveryStatus.DELIVERED:
            self.stats.delivered += 1
        elif delivery.status == DeliveryStatus.FAILED:
            self.stats.failed += 1
            last = delivery.attempts[-1] if delivery.attempts else None
            log.warning("webhook delivery failed for good", delivery_id=delivery.id,
                        webhook_id=delivery.webhook_id, attempts=len(delivery.attempts),
                        error=last.error if last else None)  # fmt: skip

    async def _post(
        self, client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        """(status code, error): error is None only for a 2xx."""
        timeout_s = self.settings.webhook_timeout_s
        timed_out = f"timed out after {timeout_s:g} s"
        with trio.move_on_after(timeout_s):  # the whole exchange, not each read
            try:
                async with client.stream("POST", url, content=body, headers=headers) as reply:
                    code = reply.status_code
                    if _small_body(reply):
                        await reply.aread()  # so the connection can be reused
            except httpx.TimeoutException:
                return None, timed_out
            except httpx.ConnectError as exc:
                if is_policy_refusal(exc):  # nothing was connected to: say only that
                    return None, REFUSED_ERROR
                return None, f"ConnectError: {exc}" if str(exc) else "ConnectError"
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                return None, _described(exc)
            except Exception as exc:  # the boundary: one target's oddity fails its attempt only
                # (the host, not the URL: a URL's query may carry a token)
                log.exception("webhook delivery raised", host=url_host(url))
                return None, _described(exc)
            if 200 <= code < 300:
                return code, None
            return code, f"HTTP {code} {reply.reason_phrase}".rstrip()
        return None, timed_out

    # -- several servers on one store ----------------------------------------------------------
    async def _follow_shared_store(self) -> None:
        """Shared store: pick up webhooks registered through other servers (every server's
        outbox writes their deliveries) and hold, or wait for, the sending lead."""
        poll_s = max(min(self.settings.shared_poll_s, LEAD_TTL_S / 3), 0.05)
        renew_every_s = LEAD_TTL_S / 3
        renew_at = -math.inf
        while True:
            try:
                await self.refresh_hooks()
                if trio.current_time() >= renew_at:
                    await self.take_lead()
                    renew_at = trio.current_time() + renew_every_s
            except Unavailable as exc:
                log.warning("webhook lead not renewed", error=exc.message)
                self.leading = False
            await trio.sleep(poll_s)

    async def refresh_hooks(self) -> None:
        """Swap in the stored webhooks when they differ from the ones this server knows."""
        stored = await self.store.list_webhooks()
        if {h.id: h for h in stored} != dict(self.outbox.hooks):
            self.outbox.set_hooks(stored)

    async def take_lead(self) -> bool:
        """Hold (or renew) the sending lead; True while this server sends."""
        me = self.server_id

        def op(tx: Any) -> bool:
            return bool(tx.take_lead(WEBHOOK_LEAD, me, LEAD_TTL_S))

        was = self.leading
        self.leading = await self.store.write(op)
        if self.leading and not was:
            log.info("sending webhooks for every server", server_id=me)
            self._wakeup.set()
        return self.leading

    # -- retention ---------------------------------------------------------------------------
    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune(self.clock.now() - self.settings.webhook_retention_s)
            except Unavailable as exc:
                log.warning("webhook history not pruned", error=exc.message)
            await trio.sleep(_PRUNE_EVERY_S)

    async def prune(self, before: float) -> int:
        """Drop finished deliveries created before `before` (epoch s); returns how many."""
        dropped = 0
        for hook_id in list(self.outbox.hooks):
            while True:
                old: list[DeliveryRef] = []
                reached_newer = False
                rows, _ = await self.store.list_deliveries(
                    hook_id, newest_first=False, limit=_CHUNK
                )
                for delivery in rows:
                    ref = delivery.ref
                    if ref.created_us / 1_000_000 >= before:
                        reached_newer = True
                        break
                    if delivery.status != DeliveryStatus.PENDING:
                        old.append(ref)
                if old:
                    dropped += await self.store.write(partial(drop_deliveries, refs=old))
                if reached_newer or len(old) < _CHUNK // 2:
                    break  # the rest is newer, or mostly still owed (the head moves on soon)
        return dropped


def _described(exc: Exception) -> str:
    """An attempt's error: the exception's type, and its message when it has one."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
