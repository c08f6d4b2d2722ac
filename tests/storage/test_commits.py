"""The storage contract, commits: per-op atomicity inside a batch, commit order, on_commit,
the event sink, durability on return, shutdown. Every test runs against every backend."""

from __future__ import annotations

import uuid

import pytest
import trio

from dtq.errors import NotFound, Unavailable
from dtq.models import Delivery, Task, User
from dtq.storage.base import Store, StoreTxn

from .conftest import NOW, Backend, make_task, running


class Boom(Exception):
    pass


def user(name: str) -> User:
    return User(username=name, role="viewer", password_hash="h", created_at=NOW)  # type: ignore[arg-type]


async def test_an_op_that_raises_leaves_no_writes(store: Store) -> None:
    kept = make_task(seq=1)
    doomed = make_task(seq=2, idempotency_key="k")
    before = await store.counters()

    def fails(tx: StoreTxn) -> None:
        tx.insert_task(doomed)
        tx.put_idempotent("k", doomed.id, b"fp")
        tx.replace_task(kept, make_task(seq=1))  # touches a stored task too
        tx.put_user(user("ghost"))
        tx.put_setting("s", "v")
        tx.count("retried")
        tx.count_day(NOW, "created")
        raise Boom

    await store.write(lambda tx: tx.insert_task(kept))
    after_insert = await store.counters()
    # Many ops in flight at once share commits where the backend groups them.
    results: dict[str, object] = {}

    async def run(key: str, op: object) -> None:
        try:
            results[key] = await store.write(op)  # type: ignore[arg-type]
        except Boom:
            results[key] = "boom"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "before", lambda tx: tx.put_user(user("a")))
        nursery.start_soon(run, "fails", fails)
        nursery.start_soon(run, "after", lambda tx: tx.put_user(user("b")))
    assert results == {"before": None, "fails": "boom", "after": None}
    assert await store.get_task(doomed.id) is None
    assert await store.get_task(kept.id) == kept
    assert await store.write(lambda tx: tx.get_idempotent("k")) is None
    assert [u.username for u in await store.list_users()] == ["a", "b"]
    assert await store.get_setting("s") is None
    assert await store.counters() == after_insert
    assert before.get("total", 0) + 1 == after_insert["total"]
    assert await store.day_stats(0, 10**9) == await store.day_stats(0, 10**9)
    [(_, day)] = await store.day_stats(0, 10**9)
    assert day.created == 1  # the kept task's, not the failed op's


async def test_commits_follow_call_order(store: Store) -> None:
    order: list[int] = []
    seen: list[object] = []

    async def write(i: int) -> None:
        def op(tx: StoreTxn) -> int:
            seen.append(tx.get_setting("last"))
            tx.put_setting("last", str(i))
            return i

        await store.write(op, order.append)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(write, i)
            await trio.lowlevel.checkpoint()  # call order 0, 1, 2, ...
    assert order == list(range(20))
    assert seen == [None, *[str(i) for i in range(19)]]  # each op saw the one before
    assert await store.get_setting("last") == "19"


@pytest.mark.parametrize(
    "hint",
    [{"ordered": False}, {"quick": True}],
    ids=["unordered", "quick"],
)
async def test_a_hinted_write_commits_its_op_and_runs_on_commit(
    store: Store, hint: dict[str, bool]
) -> None:
    """`ordered=False` and `quick=True` change where or when a store may commit an op (see
    the port), never what the caller sees: durable on return, on_commit first, and a failing
    op leaves nothing behind."""
    marks: list[str] = []
    result = await store.write(lambda tx: tx.put_setting("u", "1") or "done", marks.append, **hint)
    assert result == "done" and marks == ["done"]
    assert await store.get_setting("u") == "1"

    def missing(tx: StoreTxn) -> None:
        tx.put_setting("v", "1")
        raise NotFound("no such thing")

    with pytest.raises(NotFound):  # it fails alone, leaving nothing behind
        await store.write(missing, **hint)
    assert await store.get_setting("v") is None


async def test_on_commit_runs_before_write_returns(store: Store) -> None:
    marks: list[str] = []
    result = await store.write(lambda tx: "r", lambda r: marks.append(f"committed {r}"))
    marks.append("returned")
    assert result == "r" and marks == ["committed r", "returned"]


async def test_commit_hooks_and_stats(store: Store) -> None:
    sizes: list[int] = []
    store.commit_hooks.append(lambda size, seconds: sizes.append(size))
    commits = store.stats.commits
    await store.write(lambda tx: None)
    assert sum(sizes) == 1 and store.stats.commits == commits + 1 and store.stats.ops >= 1


async def test_the_event_sink_writes_in_the_same_op(store: Store) -> None:
    hook_id = str(uuid.uuid4())
    seen: list[tuple[str | None, str | None]] = []

    def sink(tx: StoreTxn, old: Task | None, new: Task | None) -> None:
        seen.append((old and old.status, new and new.status))
        task = new or old
        assert task is not None
        tx.put_delivery(None, Delivery(id=str(uuid.uuid4()), webhook_id=hook_id, event="e",
                                       task=task, created_at=tx.now, next_attempt_at=tx.now))  # fmt: skip

    store.set_event_sink(sink)
    task = make_task(seq=1)

    def fails(tx: StoreTxn) -> None:
        tx.insert_task(make_task(seq=2))
        raise Boom

    await store.write(lambda tx: tx.insert_task(task))
    with pytest.raises(Boom):
        await store.write(fails)
    await store.write(lambda tx: tx.delete_task(task))
    store.set_event_sink(None)
    await store.write(lambda tx: tx.insert_task(make_task(seq=3)))
    assert seen == [(None, "pending"), (None, "pending"), ("pending", None)]
    _, total = await store.list_deliveries(hook_id)
    assert total == 2  # the failed op's delivery went with it
    assert len(await store.due_deliveries(10)) == 2


async def test_durable_on_return(backend: Backend) -> None:
    if not backend.durable:
        pytest.skip(f"{backend.name}: durability mode none, nothing outlives the store")
    task = make_task(seq=1)
    async with running(backend.make()) as store:
        await store.write(lambda tx: tx.insert_task(task))
        await store.write(lambda tx: tx.put_user(user("u")))
        await store.write(lambda tx: tx.count("retried", 3))
    async with running(backend.make()) as again:
        assert await again.get_task(task.id) == task
        assert await again.get_user("u") == user("u")
        assert (await again.counters())["retried"] == 3
        seq = await again.write(lambda tx: tx.next_seq())
        assert seq >= 1


async def test_no_writes_after_close(backend: Backend) -> None:
    store = backend.make()
    async with running(store):
        pass
    with pytest.raises(Unavailable):
        await store.write(lambda tx: None)
