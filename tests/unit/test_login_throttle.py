"""The per-account login throttle: pure logic, time passed in."""

from __future__ import annotations

import pytest

from dtq.core.auth import LoginThrottle
from dtq.errors import RateLimited

T0 = 1_700_000_000.0


def fail(throttle: LoginThrottle, username: str, now: float, times: int = 1) -> None:
    """`times` attempts at `now` that turn out wrong (a failure is what `begin` counts)."""
    for _ in range(times):
        throttle.begin(username, now)


def fail_until_locked_for(throttle: LoginThrottle, username: str, now: float, lock_s: int) -> float:
    """Fail as soon as admitted until one failure locks `username` for `lock_s`; the time then."""
    while True:
        now += throttle.retry_after_s(username, now)
        throttle.begin(username, now)
        if throttle.retry_after_s(username, now) >= lock_s:
            return now


def refused(throttle: LoginThrottle, username: str, now: float) -> int:
    with pytest.raises(RateLimited) as info:
        throttle.begin(username, now)
    assert info.value.status == 429
    assert info.value.details["reason"] == "login_throttled"
    return info.value.retry_after_s


def test_nine_failures_are_free_the_tenth_locks_for_a_second() -> None:
    throttle = LoginThrottle()
    fail(throttle, "alice", T0, 9)
    assert throttle.retry_after_s("alice", T0) == 0
    fail(throttle, "alice", T0)
    assert refused(throttle, "alice", T0) == 1
    assert refused(throttle, "alice", T0 + 0.5) == 1
    fail(throttle, "alice", T0 + 1)  # the window has passed: admitted again


def test_the_lock_doubles_and_is_capped_at_15_minutes() -> None:
    throttle = LoginThrottle()
    now = T0
    fail(throttle, "alice", now, 9)
    locks = []
    for _ in range(14):
        fail(throttle, "alice", now)
        wait = throttle.retry_after_s("alice", now)
        locks.append(wait)
        assert refused(throttle, "alice", now) == wait
        now += wait
    assert locks == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900, 900]


def test_refused_attempts_change_nothing() -> None:
    throttle = LoginThrottle()
    fail(throttle, "alice", T0, 10)
    for _ in range(1000):  # a flood while locked neither extends the lock nor grows it
        refused(throttle, "alice", T0 + 0.25)
    fail(throttle, "alice", T0 + 1)
    assert throttle.retry_after_s("alice", T0 + 1) == 2


def test_a_correct_password_clears_the_record() -> None:
    throttle = LoginThrottle()
    fail(throttle, "alice", T0, 10)
    throttle.begin("alice", T0 + 1)  # after the window: admitted ...
    throttle.succeeded("alice")  # ... and the password was right
    assert throttle.retry_after_s("alice", T0 + 1) == 0
    assert len(throttle) == 0
    fail(throttle, "alice", T0 + 1, 9)  # a fresh start: nine free again
    assert throttle.retry_after_s("alice", T0 + 1) == 0


def test_failures_decay_after_15_quiet_minutes() -> None:
    throttle = LoginThrottle()
    now = fail_until_locked_for(throttle, "alice", T0, 900)  # the longest window
    assert throttle.retry_after_s("alice", now) == 900
    assert throttle.retry_after_s("alice", now + 900) == 0  # never locked for good
    fail(throttle, "alice", now + 900)  # right after the lock: still counted, locked again
    assert throttle.retry_after_s("alice", now + 900) == 900
    later = now + 900 + 900 + 900  # the lock ended, then 15 quiet minutes: counted from scratch
    fail(throttle, "alice", later, 9)
    assert throttle.retry_after_s("alice", later) == 0


def test_usernames_are_throttled_separately_known_or_not() -> None:
    throttle = LoginThrottle()
    fail(throttle, "no-such-user", T0, 10)
    refused(throttle, "no-such-user", T0)
    fail(throttle, "bob", T0)  # unaffected
    assert throttle.retry_after_s("bob", T0) == 0


def test_concurrent_attempts_count_before_they_finish() -> None:
    # Ten guesses started together (each still in its password hash) lock the eleventh.
    throttle = LoginThrottle()
    for _ in range(10):
        throttle.begin("alice", T0)
    refused(throttle, "alice", T0)


def test_memory_is_bounded_and_the_stalest_record_goes_first() -> None:
    throttle = LoginThrottle(max_entries=3)
    fail(throttle, "a", T0, 10)
    fail(throttle, "b", T0 + 1)
    fail(throttle, "c", T0 + 2)
    fail(throttle, "a", T0 + 3)  # "a" failed most recently now: "b" is the stalest
    fail(throttle, "d", T0 + 4)
    assert len(throttle) == 3
    assert throttle.retry_after_s("a", T0 + 4) > 0  # kept
    fail(throttle, "e", T0 + 5)
    fail(throttle, "f", T0 + 6)
    fail(throttle, "g", T0 + 7)
    assert len(throttle) == 3


def test_huge_failure_counts_do_not_overflow() -> None:
    throttle = LoginThrottle(base_lock_s=1e-300, max_lock_s=1.0)
    for i in range(3000):
        fail(throttle, "alice", T0 + i)
    assert throttle.retry_after_s("alice", T0 + 2999) == 1


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        LoginThrottle(base_lock_s=0)
    with pytest.raises(ValueError):
        LoginThrottle(base_lock_s=10, max_lock_s=1)
    with pytest.raises(ValueError):
        LoginThrottle(max_entries=0)
