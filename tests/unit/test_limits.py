"""Queue limits and explain as pure logic: no trio, no store, time given."""

from __future__ import annotations

import uuid

from dtq.core.dispatcher import Dispatcher, Entry
from dtq.core.explain import Facts, explain
from dtq.core.limits import Block, Limits, TokenBucket
from dtq.models import Lease, Priority, QueueConfig, Task, TaskError, TaskStatus

S = TaskStatus
NOW = 1_750_000_000.0


def test_token_bucket_burst_is_one_second_and_refills_at_the_rate() -> None:
    bucket = TokenBucket(20, NOW)
    assert sum(bucket.take(NOW) for _ in range(50)) == 20  # the burst: one second's worth
    assert not bucket.take(NOW)
    assert abs(bucket.next_token_at(NOW) - (NOW + 0.05)) < 1e-9
    assert sum(bucket.take(NOW + 0.5) for _ in range(50)) == 10
    assert sum(bucket.take(NOW + 100) for _ in range(50)) == 20  # never more than the burst
    slow = TokenBucket(0.5, NOW)
    assert slow.take(NOW) and not slow.take(NOW + 1) and slow.take(NOW + 2)


def test_limits_block_and_free() -> None:
    limits = Limits()
    limits.configure(QueueConfig(name="q", concurrency_limit=2, concurrency_limit_per_key=1), NOW)
    assert limits.queue_block("q", NOW) is None and limits.queue_block("other", NOW) is None
    limits.claim("t1", "q", "a", NOW)
    assert limits.key_blocked("q", "a") and not limits.key_blocked("q", "b")
    assert not limits.key_blocked("q", None)
    limits.claim("t2", "q", None, NOW)
    assert limits.queue_block("q", NOW) == Block.CONCURRENCY
    assert limits.release("t1") == ("q", "a") and limits.release("t1") is None
    assert limits.queue_block("q", NOW) is None and not limits.key_blocked("q", "a")
    limits.configure(QueueConfig(name="q", paused=True), NOW)
    assert limits.queue_block("q", NOW) == Block.PAUSED
    limits.configure(QueueConfig(name="q"), NOW)  # nothing set: no longer constrained
    assert not limits.constrains("q") and limits.running["q"] == 1  # still counted


def entry(n: int, key: str | None = None, queue: str = "q") -> Entry:
    return Entry(f"t{n}", queue, Priority.MEDIUM.rank, n, "job", float(n), key)


def test_dispatcher_parks_blocked_keys_and_brings_them_back_in_order() -> None:
    d = Dispatcher(now=lambda: NOW)
    d.configure(QueueConfig(name="q", concurrency_limit_per_key=1))
    for n, key in enumerate(["a", "a", "a", "b", None, "b"]):
        d.push(entry(n, key))
    assert [e.task_id for e in d.take(None, None, 10)] == ["t0", "t3", "t4"]
    assert d.take(None, None, 10) == []
    assert d.ready_count() == 3 and d.is_parked("t1")
    d.finished("t0")
    assert [e.task_id for e in d.take(None, None, 10)] == ["t1"]
    d.finished("t3")
    d.finished("t1")
    assert [e.task_id for e in d.take(None, None, 10)] == ["t2", "t5"]


def test_dispatcher_position_and_head_age() -> None:
    d = Dispatcher(now=lambda: NOW)
    for n in range(4):
        d.push(entry(n))
    assert [d.position(f"t{n}") for n in range(4)] == [0, 1, 2, 3]
    assert d.position("nope") is None
    assert d.queue_head_age("q", 10.0) == 10.0 and d.queue_head_age("x", 10.0) is None


def task(**kw: object) -> Task:
    base: dict[str, object] = dict(
        id=str(uuid.uuid4()), name="job", description=None, priority=Priority.MEDIUM,
        status=S.PENDING, queue="q", payload={}, retry_count=1, timeout=60.0,
        created_at=NOW, updated_at=NOW, seq=1,
    )  # fmt: skip
    base.update(kw)
    return Task(**base)  # type: ignore[arg-type]


def facts(**kw: object) -> Facts:
    base: dict[str, object] = dict(
        now=NOW, config=None, running_in_queue=0, running_for_key=0, next_token_at=None,
        queue_polled=True, name_polled=True, position=0,
    )  # fmt: skip
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def codes(t: Task, f: Facts) -> list[str]:
    return [r["code"] for r in explain(t, f).reasons]


def test_explain_codes() -> None:
    assert codes(task(), facts()) == [] and explain(task(), facts()).runnable
    assert codes(task(run_at=NOW + 5), facts()) == ["scheduled"]
    retrying = task(run_at=NOW + 5, attempts=1, error=TaskError(message="x"))
    assert explain(retrying, facts()).reasons[0] == {
        "code": "retry_backoff", "message": "waiting before its next retry", "until": NOW + 5,
    }  # fmt: skip
    cfg = QueueConfig(name="q", paused=True, concurrency_limit=2, concurrency_limit_per_key=1,
                      rate_limit_per_second=5)  # fmt: skip
    got = explain(task(concurrency_key="k"), facts(
        config=cfg, running_in_queue=2, running_for_key=1, next_token_at=NOW + 0.2,
        queue_polled=False, position=3,
    ))  # fmt: skip
    assert [r["code"] for r in got.reasons] == [
        "queue_paused", "queue_concurrency_limit", "key_concurrency_limit", "queue_rate_limit",
        "no_worker_polling", "position",
    ]  # fmt: skip
    assert not got.runnable
    assert codes(task(), facts(name_polled=False)) == ["no_worker_polling"]
    lease = Lease(id="l", worker_id="w1", granted_at=NOW, expires_at=NOW + 30)
    running = explain(task(status=S.RUNNING, lease=lease, worker_id="w1"), facts())
    assert running.reasons[0]["code"] == "running"
    assert running.reasons[0]["lease_expires_at"] == NOW + 30
    assert codes(task(status=S.COMPLETED), facts()) == ["finished"]


def test_fingerprint_of_a_body_without_concurrency_key_is_as_before() -> None:
    import hashlib
    from datetime import UTC, datetime

    import msgspec

    from dtq.core.states import fingerprint
    from dtq.models import TaskCreate

    class Before(msgspec.Struct, kw_only=True):  # TaskCreate's fields before concurrency_key
        name: str
        description: str | None = None
        priority: Priority = Priority.MEDIUM
        retry_count: int = 0
        timeout: float = 3600.0
        payload: dict[str, object] = msgspec.field(default_factory=dict)
        queue: str = "default"
        run_at: datetime | None = None
        delay: float | None = None
        idempotency_key: str | None = None
        tags: list[str] = msgspec.field(default_factory=list)
        retry_backoff_s: float | None = None
        retry_backoff_max_s: float | None = None

    fields: dict[str, object] = {"name": "j", "payload": {"z": 1, "a": [1, {"y": 2, "b": 3}]},
              "run_at": datetime(2030, 1, 1, tzinfo=UTC), "tags": ["t"], "idempotency_key": "k"}  # fmt: skip
    old = hashlib.blake2b(
        msgspec.msgpack.Encoder(order="deterministic").encode(Before(**fields)),  # type: ignore[arg-type]
        digest_size=16,
    ).digest()
    assert fingerprint(TaskCreate(**fields)) == old  # type: ignore[arg-type]
    assert fingerprint(TaskCreate(**fields, concurrency_key="c")) != old  # type: ignore[arg-type]
