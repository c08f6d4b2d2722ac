"""The task state machine, leases and retry backoff as pure functions: no I/O, explicit `now`."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtq.core import states as lifecycle
from dtq.errors import Conflict, InvalidRequest, InvalidTransition, LeaseLost
from dtq.models import Priority, Task, TaskCreate, TaskError, TaskStatus, TaskUpdate
from dtq.retry import RetryPolicy

S = TaskStatus
NOW = 1_700_000_000.0
POLICY = RetryPolicy()  # 1 s, doubling, capped at 1 h, +-25 %

EXPECTED_TRANSITIONS = {
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.CANCELLED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.PENDING),
    (S.RUNNING, S.CANCELLED),
}


def make_task(now: float = NOW, **kw: Any) -> Task:
    kw.setdefault("name", "job")
    return lifecycle.new_task(TaskCreate(**kw), task_id=str(uuid.uuid4()), seq=1, now=now)


def with_status(status: TaskStatus) -> Task:
    return msgspec.structs.replace(make_task(), status=status)


def leased(now: float = NOW, lease_s: float = 60, **kw: Any) -> Task:
    return lifecycle.grant_lease(make_task(now, **kw), worker_id="w1", lease_s=lease_s, now=now)


def fail(task: Task, now: float, retry: bool | None = None, rand: float = 0.5) -> Task:
    assert task.lease is not None
    return lifecycle.fail(
        task,
        lease_id=task.lease.id,
        error=TaskError(message="boom", type="ValueError"),
        retry=retry,
        now=now,
        policy=POLICY,
        rand=rand,
    )


# --------------------------------------------------------------------------- transitions


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(S, S)))
def test_transition_table_every_pair(src: TaskStatus, dst: TaskStatus) -> None:
    task = with_status(src)
    if (src, dst) in EXPECTED_TRANSITIONS:
        lifecycle.check_transition(task, dst)
        assert dst in lifecycle.TRANSITIONS[src]
    else:
        with pytest.raises(InvalidTransition) as info:
            lifecycle.check_transition(task, dst)
        assert isinstance(info.value, Conflict)
        assert info.value.details["field"] == "status"
        assert dst not in lifecycle.TRANSITIONS[src]


def test_final_states_have_no_way_out() -> None:
    for status in S:
        assert status.is_final == (not lifecycle.TRANSITIONS[status])
    assert {s for s in S if s.is_final} == {S.COMPLETED, S.FAILED, S.CANCELLED}


def test_repr_shows_state() -> None:
    task = make_task()
    assert "pending" in repr(task) and task.id in repr(task)


# --------------------------------------------------------------------------- new tasks


def test_new_task_defaults() -> None:
    task = make_task()
    assert task.status == S.PENDING
    assert task.priority == Priority.MEDIUM
    assert task.queue == "default"
    assert task.attempts == 0 and task.retry_count == 0 and task.timeout == 3600
    assert task.created_at == task.updated_at == NOW
    assert task.run_at is None and task.lease is None
    assert lifecycle.is_due(task, NOW)


def test_new_task_delay_and_run_at() -> None:
    delayed = make_task(delay=30)
    assert delayed.run_at == NOW + 30
    assert not lifecycle.is_due(delayed, NOW + 29.999)
    assert lifecycle.is_due(delayed, NOW + 30)

    future = datetime.fromtimestamp(NOW + 100, UTC)
    assert make_task(run_at=future).run_at == NOW + 100
    past = datetime.fromtimestamp(NOW - 100, UTC)
    assert make_task(run_at=past).run_at is None  # already due: plain FIFO
    assert make_task(delay=0).run_at is None
    # delay wins over run_at
    assert make_task(run_at=future, delay=5).run_at == NOW + 5


@pytest.fixture
def local_time_not_utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "EST5"  # POSIX form: UTC-5, needs no tz database
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_naive_run_at_is_utc_or_rejected(local_time_not_utc: None) -> None:
    raw = b'{"name": "x", "run_at": "2030-01-01T00:00:00"}'
    try:
        body = msgspec.json.decode(raw, type=TaskCreate)
    except msgspec.ValidationError:
        return  # rejecting it is fine too
    task = lifecycle.new_task(body, task_id=str(uuid.uuid4()), seq=1, now=NOW)
    assert task.run_at == datetime(2030, 1, 1, tzinfo=UTC).timestamp()


def test_run_at_with_offset() -> None:
    raw = b'{"name": "x", "run_at": "2030-01-01T05:00:00+05:00"}'
    body = msgspec.json.decode(raw, type=TaskCreate)
    task = lifecycle.new_task(body, task_id=str(uuid.uuid4()), seq=1, now=NOW)
    assert task.run_at == datetime(2030, 1, 1, tzinfo=UTC).timestamp()


def test_is_due_only_for_pending() -> None:
    assert not lifecycle.is_due(leased(), NOW + 10_000)


def test_fingerprint_tells_bodies_apart() -> None:
    a = TaskCreate(name="x", payload={"a": 1}, idempotency_key="k")
    assert lifecycle.fingerprint(a) == lifecycle.fingerprint(
        TaskCreate(name="x", payload={"a": 1}, idempotency_key="k")
    )
    assert lifecycle.fingerprint(a) != lifecycle.fingerprint(
        TaskCreate(name="x", payload={"a": 2}, idempotency_key="k")
    )


# --------------------------------------------------------------------------- leases


def test_grant_lease() -> None:
    task = make_task(delay=5)
    granted = lifecycle.grant_lease(task, worker_id="w1", lease_s=60, now=NOW + 5)
    assert granted.status == S.RUNNING
    assert granted.attempts == 1
    assert granted.worker_id == "w1"
    assert granted.started_at == NOW + 5 and granted.updated_at == NOW + 5
    assert granted.run_at is None
    assert granted.lease is not None
    assert granted.lease.worker_id == "w1"
    assert granted.lease.granted_at == NOW + 5
    assert granted.lease.expires_at == NOW + 65
    assert task.status == S.PENDING  # the input is not mutated


def test_lease_ids_are_unique_fencing_tokens() -> None:
    task = make_task()
    leases = [
        lifecycle.grant_lease(task, worker_id="w", lease_s=1, now=NOW).lease for _ in range(50)
    ]
    assert len({lease.id for lease in leases if lease is not None}) == 50


def test_grant_lease_is_capped_by_task_timeout() -> None:
    task = leased(lease_s=600, timeout=30)
    assert task.lease is not None and task.lease.expires_at == NOW + 30


@pytest.mark.parametrize("status", [S.RUNNING, S.COMPLETED, S.FAILED, S.CANCELLED])
def test_grant_lease_only_from_pending(status: TaskStatus) -> None:
    with pytest.raises(InvalidTransition):
        lifecycle.grant_lease(with_status(status), worker_id="w", lease_s=10, now=NOW)


def test_complete_with_current_lease() -> None:
    task = leased()
    assert task.lease is not None
    done = lifecycle.complete(task, lease_id=task.lease.id, result={"r": 1}, now=NOW + 12)
    assert done.status == S.COMPLETED
    assert done.result == {"r": 1}
    assert done.lease is None and done.error is None
    assert done.completed_at == NOW + 12 and done.duration == 12
    assert done.worker_id == "w1"
    assert done.attempts == 1


def test_complete_with_stale_lease_id() -> None:
    task = leased()
    with pytest.raises(LeaseLost) as info:
        lifecycle.complete(task, lease_id="not-the-lease", result=None, now=NOW + 1)
    assert info.value.details["field"] == "lease_id"
    assert info.value.status == 409 and info.value.code == "CONFLICT"


def test_complete_with_expired_lease() -> None:
    task = leased(lease_s=10)
    assert task.lease is not None
    lifecycle.check_lease(task, task.lease.id, NOW + 9.999)
    with pytest.raises(LeaseLost, match="expired"):
        lifecycle.complete(task, lease_id=task.lease.id, result=None, now=NOW + 10)


def test_old_lease_cannot_complete_a_re_leased_task() -> None:
    first = leased(lease_s=10, retry_count=1)
    assert first.lease is not None
    expired = lifecycle.expire(first, now=NOW + 10, policy=POLICY, rand=0.5)
    second = lifecycle.grant_lease(expired, worker_id="w2", lease_s=10, now=NOW + 11)
    assert second.lease is not None and second.lease.id != first.lease.id
    with pytest.raises(LeaseLost):
        lifecycle.complete(second, lease_id=first.lease.id, result=None, now=NOW + 12)
    lifecycle.complete(second, lease_id=second.lease.id, result=None, now=NOW + 12)


def test_lease_after_cancel_is_lost() -> None:
    task = leased()
    assert task.lease is not None
    cancelled = lifecycle.cancel(task, now=NOW + 1)
    for act in (
        lambda lid: lifecycle.complete(cancelled, lease_id=lid, result=None, now=NOW + 2),
        lambda lid: fail(msgspec.structs.replace(cancelled, lease=task.lease), NOW + 2),
        lambda lid: lifecycle.extend_lease(cancelled, lease_id=lid, lease_s=10, now=NOW + 2),
    ):
        with pytest.raises(LeaseLost):
            act(task.lease.id)


def test_complete_twice_is_lost() -> None:
    task = leased()
    assert task.lease is not None
    done = lifecycle.complete(task, lease_id=task.lease.id, result=1, now=NOW + 1)
    with pytest.raises(LeaseLost):
        lifecycle.complete(done, lease_id=task.lease.id, result=2, now=NOW + 1)


def test_extend_lease() -> None:
    task = leased(lease_s=10)
    assert task.lease is not None
    ext = lifecycle.extend_lease(task, lease_id=task.lease.id, lease_s=30, now=NOW + 5)
    assert ext.lease is not None
    assert ext.lease.id == task.lease.id
    assert ext.lease.expires_at == NOW + 35
    assert ext.updated_at == NOW + 5
    # never shortens the current lease
    short = lifecycle.extend_lease(ext, lease_id=task.lease.id, lease_s=1, now=NOW + 6)
    assert short.lease is not None and short.lease.expires_at == NOW + 35


def test_extend_is_capped_at_started_plus_timeout() -> None:
    task = leased(lease_s=10, timeout=100)
    assert task.lease is not None
    ext = lifecycle.extend_lease(task, lease_id=task.lease.id, lease_s=1000, now=NOW + 5)
    assert ext.lease is not None and ext.lease.expires_at == NOW + 100
    again = lifecycle.extend_lease(ext, lease_id=task.lease.id, lease_s=1000, now=NOW + 90)
    assert again.lease is not None and again.lease.expires_at == NOW + 100


def test_extend_stale_or_expired() -> None:
    task = leased(lease_s=10)
    assert task.lease is not None
    with pytest.raises(LeaseLost):
        lifecycle.extend_lease(task, lease_id="other", lease_s=10, now=NOW + 1)
    with pytest.raises(LeaseLost):
        lifecycle.extend_lease(task, lease_id=task.lease.id, lease_s=10, now=NOW + 10)


# --------------------------------------------------------------------------- failures and retries


def test_fail_with_retries_left_goes_back_to_pending_with_backoff() -> None:
    task = leased(retry_count=2)
    failed = fail(task, NOW + 3, rand=0.5)
    assert failed.status == S.PENDING
    assert failed.lease is None
    assert failed.error == TaskError(message="boom", type="ValueError")
    assert failed.run_at == NOW + 3 + 1.0  # first retry: about 1 s
    assert failed.attempts == 1
    assert not lifecycle.is_due(failed, NOW + 3.5)
    assert lifecycle.is_due(failed, NOW + 4)


@pytest.mark.parametrize("retry_count", [0, 1, 3])
def test_retry_count_n_allows_n_retries(retry_count: int) -> None:
    task = make_task(retry_count=retry_count)
    now = NOW
    for attempt in range(1, retry_count + 2):
        task = lifecycle.grant_lease(task, worker_id="w", lease_s=60, now=now)
        assert task.attempts == attempt
        task = fail(task, now + 1)
        now = (task.run_at or now) + 1
        if attempt <= retry_count:
            assert task.status == S.PENDING, attempt
        else:
            assert task.status == S.FAILED
    assert task.attempts == retry_count + 1
    assert task.completed_at is not None and task.lease is None


def test_backoff_doubles_between_retries() -> None:
    task = make_task(retry_count=4)
    delays = []
    now = NOW
    for _ in range(4):
        task = lifecycle.grant_lease(task, worker_id="w", lease_s=60, now=now)
        task = fail(task, now, rand=0.5)
        assert task.run_at is not None
        delays.append(task.run_at - now)
        now = task.run_at
    assert delays == [1.0, 2.0, 4.0, 8.0]


def test_fail_retry_false_fails_for_good() -> None:
    failed = fail(leased(retry_count=5), NOW + 1, retry=False)
    assert failed.status == S.FAILED
    assert failed.error is not None and failed.error.message == "boom"
    assert failed.duration == 1


def test_fail_retry_true_cannot_exceed_retry_count() -> None:
    assert fail(leased(retry_count=0), NOW + 1, retry=True).status == S.FAILED


def test_fail_with_stale_lease() -> None:
    task = leased(retry_count=1)
    with pytest.raises(LeaseLost):
        lifecycle.fail(
            task,
            lease_id="not-the-lease",
            error=TaskError(message="m"),
            retry=None,
            now=NOW + 1,
            policy=POLICY,
            rand=0.5,
        )


def test_per_task_backoff_override() -> None:
    task = make_task(retry_count=3, retry_backoff_s=10, retry_backoff_max_s=15)
    now = NOW
    delays = []
    for _ in range(3):
        task = lifecycle.grant_lease(task, worker_id="w", lease_s=60, now=now)
        task = fail(task, now, rand=0.5)
        assert task.run_at is not None
        delays.append(task.run_at - now)
        now = task.run_at
    assert delays == [10.0, 15.0, 15.0]


def test_global_policy_applies_without_override() -> None:
    task = leased(retry_count=1)
    assert task.lease is not None
    slow = RetryPolicy(base_s=7, cap_s=100)
    failed = lifecycle.fail(
        task,
        lease_id=task.lease.id,
        error=TaskError(message="m"),
        retry=None,
        now=NOW,
        policy=slow,
        rand=0.5,
    )
    assert failed.run_at == NOW + 7


# --------------------------------------------------------------------------- expiry


def test_expire_before_deadline_is_refused() -> None:
    task = leased(lease_s=10)
    with pytest.raises(InvalidTransition):
        lifecycle.expire(task, now=NOW + 9, policy=POLICY, rand=0.5)
    with pytest.raises(InvalidTransition):
        lifecycle.expire(make_task(), now=NOW + 100, policy=POLICY, rand=0.5)


def test_expire_with_retries_left_is_ready_at_once() -> None:
    task = leased(lease_s=10, retry_count=1)
    expired = lifecycle.expire(task, now=NOW + 10, policy=POLICY, rand=0.5)
    assert expired.status == S.PENDING
    assert expired.run_at is None  # ready again at once, no backoff
    assert expired.lease is None
    assert expired.error is not None and expired.error.type == lifecycle.LEASE_EXPIRED
    assert expired.attempts == 1
    assert lifecycle.is_due(expired, NOW + 10)


def test_a_lost_lease_uses_no_retry() -> None:
    """retry_count 0: a lost lease (worker gone, server down) is no handler failure."""
    task = leased(lease_s=10)
    expired = lifecycle.expire(task, now=NOW + 11, policy=POLICY, rand=0.5)
    assert expired.status == S.PENDING and expired.run_at is None
    assert expired.error is not None and expired.error.type == "lease_expired"
    assert expired.lost_leases == 1 and expired.deliveries == 1
    # ... and the retry budget is whole: a reported failure on the next lease fails it for good
    again = lifecycle.grant_lease(expired, worker_id="w2", lease_s=10, now=NOW + 12)
    assert again.deliveries == 2 and again.attempts == 2
    assert fail(again, NOW + 13).status == S.FAILED


def test_lost_leases_fail_the_task_after_max_deliveries() -> None:
    task = leased(lease_s=10, retry_count=2)
    now = NOW
    for n in range(1, 4):
        task = lifecycle.expire(task, now=now + 10, policy=POLICY, rand=0.5, max_deliveries=3)
        assert task.lost_leases == n
        if n < 3:
            assert task.status == S.PENDING
            now += 10
            task = lifecycle.grant_lease(task, worker_id="w1", lease_s=10, now=now)
    assert task.status == S.FAILED
    assert task.error is not None and task.error.type == lifecycle.LEASE_EXPIRED
    assert "max_deliveries is 3" in task.error.message
    assert task.deliveries == 3 and task.completed_at == now + 10


def test_lost_leases_leave_the_retries_to_handler_failures() -> None:
    task = leased(lease_s=10, retry_count=1)
    task = lifecycle.expire(task, now=NOW + 10, policy=POLICY, rand=0.5)  # lost: no retry used
    task = lifecycle.grant_lease(task, worker_id="w1", lease_s=10, now=NOW + 10)
    task = fail(task, NOW + 11)  # the one retry
    assert task.status == S.PENDING
    assert task.run_at is not None
    later = task.run_at
    task = lifecycle.grant_lease(task, worker_id="w1", lease_s=10, now=later)
    assert fail(task, later + 1).status == S.FAILED  # retries used up


def test_holder_check() -> None:
    task = lifecycle.grant_lease(make_task(), worker_id="w1", lease_s=10, now=NOW, holder="key:a")
    assert task.lease is not None and task.lease.holder == "key:a"
    lease_id = task.lease.id
    with pytest.raises(LeaseLost) as stranger:
        lifecycle.complete(task, lease_id=lease_id, result=1, now=NOW + 1, caller="key:b")
    with pytest.raises(LeaseLost) as unknown:
        lifecycle.complete(task, lease_id="wrong", result=1, now=NOW + 1, caller="key:a")
    # the stranger learns nothing the wrong id would not have told it
    assert stranger.value.details == unknown.value.details
    assert stranger.value.message == unknown.value.message.replace("wrong", lease_id)
    for act in (
        lambda c: lifecycle.extend_lease(task, lease_id=lease_id, lease_s=5, now=NOW, caller=c),
        lambda c: lifecycle.release(task, lease_id=lease_id, now=NOW, caller=c),
    ):
        with pytest.raises(LeaseLost):
            act("key:b")
        act("key:a")
    # None: an admin (or the server itself) acts on any lease with its id
    done = lifecycle.complete(task, lease_id=lease_id, result=1, now=NOW + 1, caller=None)
    assert done.status == S.COMPLETED
    assert (
        lifecycle.complete(task, lease_id=lease_id, result=2, now=NOW + 1, caller="key:a").result
        == 2
    )


def test_restart_grace_gives_a_lease_its_length_again() -> None:
    task = leased(lease_s=30)
    restart = NOW + 100  # the server was down past the lease's expiry
    graced = lifecycle.restart_grace(task, now=restart)
    assert graced.lease is not None and graced.lease.expires_at == restart + 30
    assert graced.status == S.RUNNING and graced.attempts == task.attempts
    assert task.lease is not None
    done = lifecycle.complete(graced, lease_id=task.lease.id, result="late", now=restart + 29)
    assert done.status == S.COMPLETED  # the worker that kept running can still report


def test_a_restart_past_the_deadline_ends_as_a_lost_lease() -> None:
    """The downtime is not the handler's fault: no timeout, no retry used."""
    task = leased(lease_s=60, timeout=20)  # deadline NOW + 20
    graced = lifecycle.restart_grace(task, now=NOW + 50)
    assert graced.lease is not None and graced.lease.expires_at == NOW + 110
    expired = lifecycle.expire(graced, now=NOW + 110, policy=POLICY, rand=0.5)
    assert expired.status == S.PENDING
    assert expired.error is not None and expired.error.type == lifecycle.LEASE_EXPIRED


def test_a_graced_lease_extended_to_the_deadline_times_out() -> None:
    task = leased(lease_s=10, timeout=100)  # deadline NOW + 100
    graced = lifecycle.restart_grace(task, now=NOW + 20)  # expires NOW + 30
    assert graced.lease is not None
    extended = lifecycle.extend_lease(graced, lease_id=graced.lease.id, lease_s=500, now=NOW + 25)
    assert extended.lease is not None and extended.lease.expires_at == NOW + 100
    expired = lifecycle.expire(extended, now=NOW + 100, policy=POLICY, rand=0.5)
    assert expired.error is not None and expired.error.type == lifecycle.TIMED_OUT
    assert expired.status == S.FAILED  # a timeout is a handler failure: uses a retry (none left)


def test_expire_at_task_timeout_reports_timeout() -> None:
    task = leased(lease_s=60, timeout=20)
    expired = lifecycle.expire(task, now=NOW + 20, policy=POLICY, rand=0.5)
    assert expired.status == S.FAILED
    assert expired.error is not None and expired.error.type == lifecycle.TIMED_OUT


def test_release_hands_the_task_back_uncounted() -> None:
    task = leased(lease_s=10, retry_count=0)
    assert task.lease is not None
    released = lifecycle.release(task, lease_id=task.lease.id, now=NOW + 2)
    assert released.status == S.PENDING
    assert released.lease is None and released.run_at is None
    assert released.attempts == 0  # not counted against its retries
    assert lifecycle.is_due(released, NOW + 2)
    with pytest.raises(LeaseLost):
        lifecycle.release(released, lease_id=task.lease.id, now=NOW + 3)


def test_release_needs_the_current_lease() -> None:
    task = leased(lease_s=10)
    assert task.lease is not None
    with pytest.raises(LeaseLost):
        lifecycle.release(task, lease_id="other", now=NOW + 1)
    with pytest.raises(LeaseLost):
        lifecycle.release(task, lease_id=task.lease.id, now=NOW + 10)


# --------------------------------------------------------------------------- cancel and update


def test_cancel_pending_and_running() -> None:
    pending = lifecycle.cancel(make_task(), now=NOW + 1)
    assert pending.status == S.CANCELLED and pending.completed_at == NOW + 1
    running = lifecycle.cancel(leased(), now=NOW + 2)
    assert running.status == S.CANCELLED and running.lease is None


@pytest.mark.parametrize("status", [S.COMPLETED, S.FAILED, S.CANCELLED])
def test_cancel_final_is_refused(status: TaskStatus) -> None:
    with pytest.raises(InvalidTransition):
        lifecycle.cancel(with_status(status), now=NOW)


def test_apply_update_cancel() -> None:
    task = make_task()
    cancelled = lifecycle.apply_update(task, TaskUpdate(status=S.CANCELLED), now=NOW + 1)
    assert cancelled.status == S.CANCELLED
    # cancelling twice is not an error and changes nothing
    again = lifecycle.apply_update(cancelled, TaskUpdate(status=S.CANCELLED), now=NOW + 2)
    assert again is cancelled


@pytest.mark.parametrize("status", [S.PENDING, S.RUNNING, S.COMPLETED, S.FAILED])
def test_apply_update_status_only_cancelled(status: TaskStatus) -> None:
    with pytest.raises(InvalidRequest) as info:
        lifecycle.apply_update(make_task(), TaskUpdate(status=status), now=NOW)
    assert info.value.details["field"] == "status"


@pytest.mark.parametrize("status", [S.COMPLETED, S.FAILED])
def test_apply_update_cannot_cancel_finished(status: TaskStatus) -> None:
    with pytest.raises(InvalidTransition):
        lifecycle.apply_update(with_status(status), TaskUpdate(status=S.CANCELLED), now=NOW)


def test_apply_update_edits_pending_fields() -> None:
    task = make_task()
    change = TaskUpdate(
        description="d",
        priority=Priority.HIGH,
        retry_count=3,
        timeout=10,
        payload={"p": 1},
        tags=["a"],
    )
    new = lifecycle.apply_update(task, change, now=NOW + 1)
    assert (new.description, new.priority, new.retry_count, new.timeout) == ("d", "high", 3, 10)
    assert new.payload == {"p": 1} and new.tags == ["a"] and new.updated_at == NOW + 1
    assert lifecycle.apply_update(task, TaskUpdate(), now=NOW + 1) is task
    cleared = lifecycle.apply_update(new, TaskUpdate(payload=None), now=NOW + 2)
    assert cleared.payload is None


def test_apply_update_refuses_edits_unless_pending() -> None:
    with pytest.raises(InvalidTransition):
        lifecycle.apply_update(leased(), TaskUpdate(priority=Priority.LOW), now=NOW)
    with pytest.raises(InvalidTransition):
        lifecycle.apply_update(
            make_task(), TaskUpdate(status=S.CANCELLED, priority=Priority.LOW), now=NOW
        )


# --------------------------------------------------------------------------- RetryPolicy


@pytest.mark.parametrize(
    ("retry_number", "rand", "expected"),
    [
        (1, 0.0, 0.75),
        (1, 0.5, 1.0),
        (1, 0.999, 1.2495),
        (2, 0.0, 1.5),
        (2, 0.5, 2.0),
        (3, 0.5, 4.0),
        (4, 0.999, 9.996),
        (13, 0.5, 3600.0),  # 4096 capped
        (13, 0.0, 2700.0),  # jitter applies below the cap
        (13, 0.999, 3600.0),  # never above the cap
        (0, 0.5, 1.0),  # clamped to the first retry
        (10_000, 0.5, 3600.0),  # no overflow
    ],
)
def test_retry_policy_delay(retry_number: int, rand: float, expected: float) -> None:
    assert RetryPolicy().delay_s(retry_number, rand) == pytest.approx(expected)


@given(
    base=st.floats(0.01, 100),
    cap=st.floats(0.01, 10_000),
    n=st.integers(1, 200),
    rand=st.floats(0, 1, exclude_max=True),
)
def test_retry_policy_bounds(base: float, cap: float, n: int, rand: float) -> None:
    policy = RetryPolicy(base_s=base, cap_s=cap)
    raw = min(base * 2.0 ** min(n - 1, 62), cap)
    delay = policy.delay_s(n, rand)
    assert raw * 0.75 * (1 - 1e-9) <= delay <= min(raw * 1.25, cap) * (1 + 1e-9)
    assert delay <= cap
