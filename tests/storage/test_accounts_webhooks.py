"""The storage contract, accounts and webhooks: users, API keys, settings, webhook records and
the delivery outbox with its due index. Every test runs against every backend."""

from __future__ import annotations

import uuid

import pytest
from msgspec.structs import replace

from dtq.models import ApiKey, Delivery, DeliveryStatus, Role, User, Webhook
from dtq.storage.base import Store, StoreTxn

from .conftest import NOW, make_task


def user(name: str, role: Role = Role.VIEWER) -> User:
    return User(username=name, role=role, password_hash="h", created_at=NOW, account_id="x" * 32)


def api_key(key_id: str, created_at: float = NOW) -> ApiKey:
    return ApiKey(key_id=key_id, name="k", role=Role.WORKER, secret_hash="s",
                  created_at=created_at, rate_limit_per_minute=5)  # fmt: skip


async def test_users(store: Store) -> None:
    def op(tx: StoreTxn) -> None:
        for name in ("zed", "alice", "bob"):
            tx.put_user(user(name))

    await store.write(op)
    assert await store.get_user("alice") == user("alice")
    assert await store.get_user("nobody") is None
    assert [u.username for u in await store.list_users()] == ["alice", "bob", "zed"]
    admin = replace(user("bob"), role=Role.ADMIN, generation=1)
    await store.write(lambda tx: tx.put_user(admin))
    assert await store.write(lambda tx: tx.get_user("bob")) == admin
    assert await store.write(lambda tx: tx.delete_user("bob")) is True
    assert await store.write(lambda tx: tx.delete_user("bob")) is False
    assert [u.username for u in await store.list_users()] == ["alice", "zed"]


async def test_api_keys(store: Store) -> None:
    await store.write(lambda tx: [tx.put_api_key(api_key(k)) for k in ("bb" * 8, "aa" * 8)])
    assert await store.get_api_key("aa" * 8) == api_key("aa" * 8)
    assert await store.get_api_key("cc" * 8) is None
    assert [k.key_id for k in await store.list_api_keys()] == ["aa" * 8, "bb" * 8]
    assert await store.write(lambda tx: tx.delete_api_key("aa" * 8)) is True
    assert await store.write(lambda tx: tx.delete_api_key("aa" * 8)) is False
    assert await store.get_api_key("aa" * 8) is None


async def test_settings(store: Store) -> None:
    assert await store.get_setting("jwt_secret") is None
    await store.write(lambda tx: tx.put_setting("jwt_secret", "s3cret"))
    assert await store.get_setting("jwt_secret") == "s3cret"
    assert await store.write(lambda tx: tx.get_setting("jwt_secret")) == "s3cret"


def hook(created_at: float = NOW) -> Webhook:
    return Webhook(id=str(uuid.uuid4()), url="https://example.com/h", events=["*"],
                   secret="x" * 20, created_at=created_at)  # fmt: skip


def delivery(hook_id: str, created_at: float, due: float | None = None) -> Delivery:
    return Delivery(id=str(uuid.uuid4()), webhook_id=hook_id, event="task.created",
                    task=make_task(seq=1), created_at=created_at,
                    next_attempt_at=created_at if due is None else due)  # fmt: skip


async def test_webhooks(store: Store) -> None:
    hooks = [hook(), hook(), hook()]
    await store.write(lambda tx: [tx.put_webhook(h) for h in hooks])
    listed = await store.list_webhooks()
    assert sorted(h.id for h in hooks) == [h.id for h in listed]  # id order
    assert await store.write(lambda tx: tx.delete_webhook(hooks[0].id)) is True
    assert await store.write(lambda tx: tx.delete_webhook(hooks[0].id)) is False
    assert {h.id for h in await store.list_webhooks()} == {hooks[1].id, hooks[2].id}


async def test_deliveries_list_in_creation_order(store: Store) -> None:
    h, other = hook(), hook()
    made = [delivery(h.id, NOW + i) for i in range(4)]
    elsewhere = delivery(other.id, NOW)
    await store.write(lambda tx: [tx.put_delivery(None, d) for d in [*made[::-1], elsewhere]])
    newest, total = await store.list_deliveries(h.id)
    assert [d.id for d in newest] == [d.id for d in made[::-1]] and total == 4
    oldest, _ = await store.list_deliveries(h.id, newest_first=False, limit=2)
    assert [d.id for d in oldest] == [made[0].id, made[1].id]
    page, total = await store.list_deliveries(h.id, skip=1, limit=2)
    assert [d.id for d in page] == [made[2].id, made[1].id] and total == 4
    done = replace(made[1], status=DeliveryStatus.DELIVERED, next_attempt_at=None)
    await store.write(lambda tx: tx.put_delivery(made[1], done))
    assert await store.get_delivery(made[1].ref) == done
    assert await store.write(lambda tx: tx.get_delivery(done.ref)) == done
    only, total = await store.list_deliveries(h.id, status=DeliveryStatus.DELIVERED)
    assert [d.id for d in only] == [done.id] and total == 1
    pending, total = await store.list_deliveries(h.id, status=DeliveryStatus.PENDING, limit=1)
    assert [d.id for d in pending] == [made[3].id] and total == 3
    assert await store.list_deliveries(str(uuid.uuid4())) == ([], 0)


async def test_the_due_index(store: Store) -> None:
    h = hook()
    late = delivery(h.id, NOW, due=NOW + 30)
    soon = delivery(h.id, NOW + 1, due=NOW + 5)
    now = delivery(h.id, NOW + 2, due=NOW + 1)
    await store.write(lambda tx: [tx.put_delivery(None, d) for d in (late, soon, now)])
    due = await store.due_deliveries(10)
    assert [ref for _, ref in due] == [now.ref, soon.ref, late.ref]  # soonest first
    assert due[0][0] == pytest.approx(NOW + 1, abs=1e-6)
    assert [ref for _, ref in await store.due_deliveries(1)] == [now.ref]

    retry = replace(now, next_attempt_at=NOW + 60)  # moved to the back
    await store.write(lambda tx: tx.put_delivery(now, retry))
    assert [ref for _, ref in await store.due_deliveries(10)] == [soon.ref, late.ref, now.ref]
    finished = replace(soon, status=DeliveryStatus.FAILED, next_attempt_at=None)  # out of it
    await store.write(lambda tx: tx.put_delivery(soon, finished))
    await store.write(lambda tx: tx.delete_delivery(late))
    assert [ref for _, ref in await store.due_deliveries(10)] == [now.ref]
    assert await store.get_delivery(late.ref) is None
    _, total = await store.list_deliveries(h.id)
    assert total == 2


async def test_same_due_time_in_ref_order(store: Store) -> None:
    h = hook()
    made = [delivery(h.id, NOW + i, due=NOW + 50) for i in range(3)]
    await store.write(lambda tx: [tx.put_delivery(None, d) for d in made[::-1]])
    assert [ref for _, ref in await store.due_deliveries(10)] == [d.ref for d in made]
