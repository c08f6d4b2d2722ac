"""Pure webhook logic and the outbox against real LMDB, without sockets.

Signature, backoff, event kinds from task changes, and the outbox's one promise: a delivery
record is written in the same transaction as the task change that owes it, or not at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtq.core import ops
from dtq.core import states as lifecycle
from dtq.core.events import QUEUE_EVENT_KINDS, TASK_EVENT_KINDS
from dtq.core.queues import put_config
from dtq.core.webhooks.outbox import (
    EVENT_KINDS,
    Attempt,
    Delivery,
    DeliveryStatus,
    Outbox,
    Webhook,
    after_attempt,
    drop_deliveries,
    record_attempt,
    sign,
    task_event_kind,
    verify,
)
from dtq.core.webhooks.targets import WEBHOOK_URL_PATTERN, check_url
from dtq.errors import InvalidRequest
from dtq.models import QueueUpdate, Task, TaskCreate, TaskError, TaskUpdate
from dtq.retry import RetryPolicy
from dtq.storage.base import StoreTxn
from dtq.storage.lmdb.store import LmdbStore

NOW = 1_700_000_000.0
POLICY = RetryPolicy(base_s=1.0, cap_s=30.0)


# --- signature -----------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_exact_body() -> None:
    # RFC-style known answer: HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
    body = b"The quick brown fox jumps over the lazy dog"
    assert sign("key", body) == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )
    body = b'{"event":"task.created","delivery_id":"x"}'
    expected = hmac.new(b"s3cret-s3cret-s3cret", body, hashlib.sha256).hexdigest()
    assert sign("s3cret-s3cret-s3cret", body) == f"sha256={expected}"


def test_verify_rejects_another_body_or_secret() -> None:
    body = b'{"a": 1}'
    signature = sign("secret-one-secret", body)
    assert verify("secret-one-secret", body, signature)
    assert not verify("secret-one-secret", b'{"a": 2}', signature)
    assert not verify("secret-two-secret", body, signature)
    assert not verify("secret-one-secret", body, signature.replace("sha256=", "sha1="))


# --- backoff and the end of a delivery -------------------------------------------------------


def _delivery(attempts: int = 0) -> Delivery:
    task = lifecycle.new_task(TaskCreate(name="t"), task_id=str(uuid.uuid4()), seq=1, now=NOW)
    failed = Attempt(started_at=NOW, finished_at=NOW, status_code=500, error="HTTP 500")
    return Delivery(id=str(uuid.uuid4()), webhook_id=str(uuid.uuid4()), event="task.created",
                    task=task, created_at=NOW, next_attempt_at=NOW,
                    attempts=[failed] * attempts)  # fmt: skip


def _attempt(status_code: int | None, error: str | None = None) -> Attempt:
    return Attempt(started_at=NOW, finished_at=NOW + 0.1, status_code=status_code, error=error)


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_a_2xx_delivers(code: int) -> None:
    done = after_attempt(_delivery(2), _attempt(code), max_attempts=8, policy=POLICY, rand=0.5,
                         now=NOW + 1)  # fmt: skip
    assert done.status is DeliveryStatus.DELIVERED
    assert done.next_attempt_at is None and done.completed_at == NOW + 1
    assert len(done.attempts) == 3


@pytest.mark.parametrize("code", [None, 199, 301, 400, 404, 500, 503])
def test_anything_else_is_retried_with_exponential_backoff(code: int | None) -> None:
    # rand=0.5 is the middle of the jitter band: exactly base * 2**(n-1)
    for failures_before, expected_delay in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 30.0)]:
        d = after_attempt(_delivery(failures_before), _attempt(code, "boom"), max_attempts=8,
                          policy=POLICY, rand=0.5, now=NOW)  # fmt: skip
        assert d.status is DeliveryStatus.PENDING
        assert d.next_attempt_at == pytest.approx(NOW + expected_delay)


def test_backoff_is_jittered_within_a_quarter() -> None:
    delays = [
        after_attempt(_delivery(2), _attempt(500), max_attempts=8, policy=POLICY, rand=r,
                      now=NOW).next_attempt_at - NOW  # type: ignore[operator]
        for r in (0.0, 0.25, 0.5, 0.75, 0.999)
    ]  # fmt: skip
    assert delays == sorted(delays)
    assert 3.0 <= delays[0] < delays[-1] <= 5.0


def test_given_up_after_the_last_allowed_attempt() -> None:
    d = after_attempt(_delivery(7), _attempt(None, "ConnectError"), max_attempts=8,
                      policy=POLICY, rand=0.5, now=NOW + 5)  # fmt: skip
    assert d.status is DeliveryStatus.FAILED
    assert d.next_attempt_at is None and d.completed_at == NOW + 5
    assert len(d.attempts) == 8 and d.attempts[-1].error == "ConnectError"


# --- event kinds --------------------------------------------------------------------------------


def _lifecycle() -> Iterator[tuple[Task | None, Task | None, str | None]]:
    """(old, new, expected kind) for every kind of change the core makes."""
    body = TaskCreate(name="t", retry_count=5)
    t0 = lifecycle.new_task(body, task_id=str(uuid.uuid4()), seq=1, now=NOW)
    yield None, t0, "task.created"
    t1 = lifecycle.grant_lease(t0, worker_id="w", lease_s=60, now=NOW + 1)
    yield t0, t1, "task.leased"
    t2 = lifecycle.extend_lease(t1, lease_id=t1.lease.id, lease_s=120, now=NOW + 2)  # type: ignore[union-attr]
    yield t1, t2, None  # a lease extension is no event
    t3 = lifecycle.fail(t2, lease_id=t2.lease.id, error=TaskError("x"), retry=None,  # type: ignore[union-attr]
                        now=NOW + 3, policy=POLICY, rand=0.5)  # fmt: skip
    yield t2, t3, "task.retried"
    t4 = lifecycle.grant_lease(t3, worker_id="w", lease_s=60, now=NOW + 10)
    t5 = lifecycle.release(t4, lease_id=t4.lease.id, now=NOW + 11)  # type: ignore[union-attr]
    yield t4, t5, "task.released"
    t6 = lifecycle.grant_lease(t5, worker_id="w", lease_s=1, now=NOW + 12)
    t7 = lifecycle.expire(t6, now=NOW + 14, policy=POLICY, rand=0.5)
    yield t6, t7, "task.retried"  # a lost lease puts the task back (no retry used)
    t8 = lifecycle.apply_update(t7, TaskUpdate(description="edited"), now=NOW + 15)
    yield t7, t8, "task.updated"
    t9 = lifecycle.grant_lease(t8, worker_id="w", lease_s=60, now=NOW + 16)
    yield t9, lifecycle.complete(t9, lease_id=t9.lease.id, result=1, now=NOW + 17), "task.completed"  # type: ignore[union-attr]
    yield t9, lifecycle.fail(t9, lease_id=t9.lease.id, error=TaskError("x"), retry=False,  # type: ignore[union-attr]
                             now=NOW + 17, policy=POLICY, rand=0.5), "task.failed"  # fmt: skip
    yield t9, lifecycle.cancel(t9, now=NOW + 17), "task.cancelled"
    yield t8, lifecycle.cancel(t8, now=NOW + 17), "task.cancelled"
    yield t8, None, "task.deleted"


@pytest.mark.parametrize(("old", "new", "kind"), list(_lifecycle()))
def test_event_kind_from_the_change(old: Task | None, new: Task | None, kind: str | None) -> None:
    assert task_event_kind(old, new) == kind


def test_every_kind_is_reachable() -> None:
    assert {kind for _, _, kind in _lifecycle()} - {None} == set(TASK_EVENT_KINDS)
    assert set(EVENT_KINDS) == {*TASK_EVENT_KINDS, *QUEUE_EVENT_KINDS}  # what webhooks get


# --- url checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["https://example.com/hook", "http://127.0.0.1:8080/x?y=1", "http://[::1]:9/h",
     "HTTP://a.b:65000/p%C3%A9?q=%20#f", "https://sub_domain.example~x-y.com"],
)  # fmt: skip
def test_good_urls(url: str) -> None:
    assert check_url(url) == url
    assert re.match(WEBHOOK_URL_PATTERN, url)  # the document agrees


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "example.com/hook", "http://", "http:///path", " http://a.b/",
     "http://a.b/\n", "http://a.b:99999/", "javascript:alert(1)", "http://exa mple.com/",
     # what the document's pattern refuses (schemathesis sent the first): never accepted
     "HTTP://0*", "http://a.b/\u00e9", "http://ex\u00e4mple.com/", "http://a!b.com/"],
)  # fmt: skip
def test_bad_urls(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_url(url)
    assert info.value.details["field"] == "url"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.from_regex(WEBHOOK_URL_PATTERN, fullmatch=True))
def test_every_url_the_document_calls_valid_is_accepted(url: str) -> None:
    """Schemathesis checks both ways: no URL the pattern refuses is accepted (above), and none
    it allows is refused."""
    assert check_url(url) == url


# --- the outbox, on real LMDB --------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(str(tmp_path / "data"), fsync=False)
    try:
        yield s
    finally:
        s.close()


def _hook(events: list[str]) -> Webhook:
    return Webhook(id=str(uuid.uuid4()), url="http://127.0.0.1:9/h", events=events,
                   secret="x" * 20, created_at=NOW)  # fmt: skip


def _create(tx: StoreTxn) -> Task:
    task, _ = ops.create(tx, TaskCreate(name="t"))
    return task


def _create_then_fail(tx: StoreTxn) -> Task:
    _create(tx)
    raise InvalidRequest("changed my mind")


async def all_deliveries(store: LmdbStore, *hooks: Webhook) -> list[Delivery]:
    found = []
    for hook in hooks:
        rows, _ = await store.list_deliveries(hook.id, newest_first=False)
        found += rows
    return found


async def test_no_webhooks_no_sink(store: LmdbStore) -> None:
    outbox = Outbox()
    await outbox.install(store)
    assert store.event_sink is None  # the hot path pays one attribute check
    hook = _hook(["*"])
    outbox.set_hooks([hook])
    assert store.event_sink is not None
    outbox.set_hooks([])
    assert store.event_sink is None


async def test_delivery_written_in_the_same_transaction_as_the_change(store: LmdbStore) -> None:
    outbox = Outbox()
    await outbox.install(store)
    all_events, completed_only = _hook(["*"]), _hook(["task.completed"])
    outbox.set_hooks([all_events, completed_only])

    outcomes = store.run_batch([_create, _create_then_fail], NOW)
    assert [ok for ok, _ in outcomes] == [True, False]
    created: Task = outcomes[0][1]

    rows = await all_deliveries(store, all_events, completed_only)
    assert len(rows) == 1  # the rolled-back op left neither a task nor a delivery
    delivery = rows[0]
    assert delivery.webhook_id == all_events.id
    assert (delivery.event, delivery.task.id) == ("task.created", created.id)
    assert delivery.status is DeliveryStatus.PENDING and delivery.next_attempt_at == NOW
    assert await store.due_deliveries(10) == [(pytest.approx(NOW), delivery.ref)]
    assert outbox.wrote


async def test_queue_config_changes_owe_deliveries_in_their_own_transaction(
    store: LmdbStore,
) -> None:
    outbox = Outbox()
    await outbox.install(store)
    everything, paused_only, tasks_only = (
        _hook(["*"]),
        _hook(["queue.paused"]),
        _hook(["task.created"]),
    )
    outbox.set_hooks([everything, paused_only, tasks_only])
    sink = outbox.queue_sink

    def pause_then_fail(tx: StoreTxn) -> None:
        put_config(tx, "other", QueueUpdate(paused=True), sink)
        raise InvalidRequest("changed my mind")

    outcomes = store.run_batch(
        [lambda tx: put_config(tx, "q", QueueUpdate(paused=True), sink), pause_then_fail,
         lambda tx: put_config(tx, "q", QueueUpdate(concurrency_limit=3), sink),
         lambda tx: put_config(tx, "q", QueueUpdate(paused=False), sink)],
        NOW,
    )  # fmt: skip
    assert [ok for ok, _ in outcomes] == [True, False, True, True]
    assert await store.get_queue_config("other") is None  # rolled back: no config, no delivery
    rows = await all_deliveries(store, everything, paused_only, tasks_only)
    # (one batch, one commit time: within a webhook the order is by id)
    seen = {(d.webhook_id, d.event, d.task, d.queue.name if d.queue else None) for d in rows}
    assert seen == {
        (everything.id, "queue.paused", None, "q"),
        (everything.id, "queue.updated", None, "q"),
        (everything.id, "queue.resumed", None, "q"),
        (paused_only.id, "queue.paused", None, "q"),
    }
    assert len(rows) == 4
    [updated] = [d.queue for d in rows if d.event == "queue.updated"]
    assert updated is not None and (updated.paused, updated.concurrency_limit) == (True, 3)
    assert len(await store.due_deliveries(10)) == 4 and outbox.wrote


async def test_a_failed_batch_leaves_nothing(store: LmdbStore) -> None:
    outbox = Outbox()
    await outbox.install(store)
    hook = _hook(["*"])
    outbox.set_hooks([hook])

    def crash(tx: StoreTxn) -> None:
        _create(tx)
        raise lmdb.Error("disk trouble")  # storage failure: the whole batch is rolled back

    with pytest.raises(lmdb.Error):
        store.run_batch([_create, crash], NOW)
    assert await all_deliveries(store, hook) == [] and await store.due_deliveries(10) == []


async def test_installed_webhooks_are_loaded_from_storage(store: LmdbStore) -> None:
    from dtq.core.webhooks.outbox import put_webhook

    hook = _hook(["task.created"])
    store.run_batch([lambda tx: put_webhook(tx, hook)], NOW)
    outbox = Outbox()
    await outbox.install(store)
    assert list(outbox.hooks) == [hook.id]
    store.run_batch([_create], NOW)
    assert len(await all_deliveries(store, hook)) == 1


async def test_record_attempt_moves_the_due_entry_then_removes_it(store: LmdbStore) -> None:
    outbox = Outbox()
    await outbox.install(store)
    hook = _hook(["*"])
    outbox.set_hooks([hook])
    store.run_batch([_create], NOW)
    (first,) = await all_deliveries(store, hook)
    ref = first.ref

    def record(code: int) -> Delivery | None:
        [(ok, result)] = store.run_batch(
            [lambda tx: record_attempt(tx, ref, _attempt(code), max_attempts=8, policy=POLICY,
                                       rand=0.5)], NOW + 1,
        )  # fmt: skip
        assert ok, result
        return result  # type: ignore[no-any-return]

    retry = record(500)
    assert retry is not None and retry.next_attempt_at == pytest.approx(NOW + 2)
    assert await store.due_deliveries(10) == [(pytest.approx(NOW + 2), ref)]
    done = record(200)
    assert done is not None and done.status is DeliveryStatus.DELIVERED
    assert await store.due_deliveries(10) == []
    (stored,) = await all_deliveries(store, hook)
    assert [a.status_code for a in stored.attempts] == [500, 200]

    [(_, dropped)] = store.run_batch([lambda tx: drop_deliveries(tx, [ref])], NOW + 2)
    assert dropped == 1 and await all_deliveries(store, hook) == []
