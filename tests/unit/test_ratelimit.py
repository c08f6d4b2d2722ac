"""The rate limiter with explicit `now`: windows, headers, overrides, eviction."""

from __future__ import annotations

import pytest

from dtq.core import ratelimit
from dtq.core.ratelimit import UNLIMITED, RateDecision, RateLimiter
from dtq.errors import RateLimited

T0 = 1_700_002_800.0  # a whole hour: T0 % 3600 == 0
MINUTE_END = int(T0) + 60
HOUR_END = int(T0) + 3600


def test_t0_is_aligned() -> None:
    assert T0 % 3600 == 0


def test_counts_down_within_the_minute() -> None:
    rl = RateLimiter()
    decisions = [rl.hit("a", T0 + i * 0.1, per_minute=3, per_hour=100) for i in range(3)]
    assert [d.allowed for d in decisions] == [True, True, True]
    assert [d.remaining for d in decisions] == [2, 1, 0]
    assert {(d.limit, d.reset, d.window, d.retry_after_s) for d in decisions} == {
        (3, MINUTE_END, "minute", 0)
    }
    denied = rl.hit("a", T0 + 10.5, per_minute=3, per_hour=100)
    assert denied == RateDecision(
        allowed=False, limit=3, remaining=0, reset=MINUTE_END, retry_after_s=50, window="minute"
    )


def test_minute_window_rolls_over() -> None:
    rl = RateLimiter()
    for _ in range(3):
        assert rl.hit("a", T0 + 1, 3, 100).allowed
    assert not rl.hit("a", T0 + 59.999, 3, 100).allowed
    d = rl.hit("a", T0 + 60, 3, 100)
    assert d.allowed and d.remaining == 2 and d.reset == MINUTE_END + 60


def test_denied_requests_are_not_counted() -> None:
    rl = RateLimiter()
    for _ in range(2):
        rl.hit("a", T0, 2, 5)
    for _ in range(10):
        assert not rl.hit("a", T0 + 1, 2, 5).allowed
    # Next minute: the hour window has seen 2 requests, not 12.
    d = rl.hit("a", T0 + 60, 2, 5)
    assert d.allowed and (d.window, d.remaining) == ("minute", 1)
    d = rl.hit("a", T0 + 61, 2, 5)
    assert d.allowed and (d.window, d.remaining) == ("minute", 0)
    d = rl.hit("a", T0 + 120, 2, 5)
    assert d.allowed and (d.window, d.remaining) == ("hour", 0)
    d = rl.hit("a", T0 + 121, 2, 5)
    assert not d.allowed and (d.window, d.reset) == ("hour", HOUR_END)


def test_tie_reports_the_hour() -> None:
    rl = RateLimiter()
    rl.hit("a", T0, 2, 4)
    rl.hit("a", T0, 2, 4)
    d = rl.hit("a", T0 + 60, 2, 4)  # minute: 1 left, hour: 1 left
    assert d.allowed and (d.window, d.limit, d.remaining, d.reset) == ("hour", 4, 1, HOUR_END)


def test_hour_window_denies_and_reports_hour() -> None:
    rl = RateLimiter()
    for minute in range(5):
        for _ in range(2):
            assert rl.hit("a", T0 + minute * 60, per_minute=2, per_hour=10).allowed
    d = rl.hit("a", T0 + 5 * 60 + 30, per_minute=2, per_hour=10)
    assert d == RateDecision(
        allowed=False,
        limit=10,
        remaining=0,
        reset=HOUR_END,
        retry_after_s=HOUR_END - int(T0) - 330,
        window="hour",
    )
    d = rl.hit("a", T0 + 3600, per_minute=2, per_hour=10)
    assert d.allowed and d.remaining == 1 and d.window == "minute"


def test_tighter_window_is_the_one_with_fewer_remaining() -> None:
    rl = RateLimiter()
    d = rl.hit("a", T0, per_minute=100, per_hour=1000)
    assert (d.window, d.limit, d.remaining, d.reset) == ("minute", 100, 99, MINUTE_END)
    for _ in range(4):
        rl.hit("b", T0, per_minute=100, per_hour=5)
    d = rl.hit("b", T0, per_minute=100, per_hour=5)
    assert (d.window, d.limit, d.remaining, d.reset) == ("hour", 5, 0, HOUR_END)


def test_both_windows_exhausted_waits_for_the_later_reset() -> None:
    rl = RateLimiter()
    for _ in range(3):
        rl.hit("a", T0 + 3540, per_minute=3, per_hour=3)  # the last minute of the hour
    d = rl.hit("a", T0 + 3550, per_minute=3, per_hour=3)
    assert not d.allowed and d.retry_after_s == 50 and d.reset == HOUR_END
    rl2 = RateLimiter()
    for _ in range(3):
        rl2.hit("a", T0, per_minute=3, per_hour=3)
    d = rl2.hit("a", T0 + 10, per_minute=3, per_hour=3)
    assert not d.allowed and d.window == "hour" and d.retry_after_s == 3590


def test_retry_after_is_at_least_one_and_rounds_up() -> None:
    rl = RateLimiter()
    rl.hit("a", T0, 1, 0)
    assert rl.hit("a", T0 + 59.9999, 1, 0).retry_after_s == 1
    assert rl.hit("a", T0 + 58.5, 1, 0).retry_after_s == 2
    assert rl.hit("a", T0 + 0.0, 1, 0).retry_after_s == 60


def test_unaligned_now() -> None:
    rl = RateLimiter()
    d = rl.hit("a", T0 + 125.25, 10, 0)
    assert d.reset == int(T0) + 180


def test_disabled_windows() -> None:
    rl = RateLimiter()
    for _ in range(1000):
        assert rl.hit("a", T0, per_minute=0, per_hour=0) is UNLIMITED
    assert len(rl) == 0
    assert UNLIMITED.allowed and UNLIMITED.limit == 0 and UNLIMITED.headers() == {}

    for i in range(50):
        d = rl.hit("m", T0 + i, per_minute=0, per_hour=50)
        assert d.allowed and d.window == "hour" and d.remaining == 49 - i
    assert not rl.hit("m", T0 + 3000, per_minute=0, per_hour=50).allowed

    for i in range(5):
        d = rl.hit("h", T0 + i, per_minute=5, per_hour=0)
        assert d.allowed and d.window == "minute" and d.remaining == 4 - i
    assert not rl.hit("h", T0 + 30, per_minute=5, per_hour=0).allowed
    assert rl.hit("h", T0 + 60, per_minute=5, per_hour=0).allowed  # no hour limit behind it


def test_negative_limits_disable_too() -> None:
    assert RateLimiter().hit("a", T0, -1, -1) is UNLIMITED


def test_identities_are_independent_and_overrides_apply() -> None:
    rl = RateLimiter()
    assert rl.hit("key:small", T0, 1, 100).allowed
    assert not rl.hit("key:small", T0, 1, 100).allowed
    for _ in range(500):  # a worker key with a higher override
        assert rl.hit("key:worker", T0, 5000, 100_000).allowed
    assert rl.hit("user:alice", T0, 1, 100).allowed


def test_changing_limits_keeps_counts() -> None:
    rl = RateLimiter()
    for _ in range(5):
        rl.hit("a", T0, 10, 100)
    d = rl.hit("a", T0, 3, 100)  # limit lowered below the count: denied, remaining 0, not negative
    assert not d.allowed and d.remaining == 0 and d.limit == 3
    d = rl.hit("a", T0, 20, 100)
    assert d.allowed and d.remaining == 14


def test_clock_going_backwards_keeps_the_window() -> None:
    rl = RateLimiter()
    rl.hit("a", T0 + 61, 2, 0)
    d = rl.hit("a", T0 + 30, 2, 0)  # wall clock stepped back a minute
    assert d.allowed and d.remaining == 0 and d.reset == MINUTE_END + 60
    d = rl.hit("a", T0 + 30, 2, 0)
    assert not d.allowed and d.retry_after_s == 90


def test_headers() -> None:
    rl = RateLimiter()
    d = rl.hit("a", T0, 1, 1000)
    assert d.headers() == {
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(MINUTE_END),
    }
    denied = rl.hit("a", T0 + 20, 1, 1000)
    assert denied.headers() == {
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(MINUTE_END),
        "Retry-After": "40",
    }


def test_error() -> None:
    rl = RateLimiter()
    rl.hit("a", T0, 1, 0)
    err = rl.hit("a", T0 + 15, 1, 0).error()
    assert isinstance(err, RateLimited)
    assert err.status == 429 and err.code == "RATE_LIMITED"
    assert err.retry_after_s == 45
    assert "1 requests per minute" in err.message
    assert err.details == {"reason": "rate_limited", "limit": 1, "window": "minute"}


# --------------------------------------------------------------------------- memory


def test_expired_identities_are_evicted() -> None:
    rl = RateLimiter()
    for i in range(100):
        rl.hit(f"m{i}", T0, per_minute=10, per_hour=0)  # live until the minute ends
        rl.hit(f"h{i}", T0, per_minute=10, per_hour=100)  # live until the hour ends
    assert len(rl) == 200
    # Each hit examines a few expired entries; a hundred hits a minute later clears the minute-only.
    for i in range(100):
        rl.hit("busy", T0 + 60 + i * 0.01, 1000, 0)
    assert len(rl) == 101
    assert "m0" not in rl._counts and "h0" in rl._counts
    for i in range(200):
        rl.hit("busy", T0 + 3600 + i * 0.01, 1000, 0)
    assert len(rl) == 1
    assert rl.statistics()["pending_expiries"] <= 2


def test_eviction_is_lossless() -> None:
    rl = RateLimiter()
    rl.hit("a", T0, 2, 0)
    rl.hit("a", T0, 2, 0)
    for i in range(10):
        rl.hit("other", T0 + 59 + i * 0.01, 1000, 0)
    assert "a" in rl._counts  # not expired yet: its count still matters
    assert not rl.hit("a", T0 + 59.5, 2, 0).allowed


def test_active_identity_survives_sweeps() -> None:
    rl = RateLimiter()
    for minute in range(120):  # stale heap items for "a" are skipped, not used to evict it
        rl.hit("a", T0 + minute * 60, 10, 0)
        rl.hit("b", T0 + minute * 60 + 1, 10, 0)
    assert len(rl) == 2
    d = rl.hit("a", T0 + 119 * 60 + 2, 10, 0)
    assert d.remaining == 8


def test_capacity_bound_drops_the_longest_idle() -> None:
    rl = RateLimiter(max_identities=10)
    for i in range(10):
        rl.hit(f"id{i}", T0 + i, 5, 100)
    rl.hit("id0", T0 + 60, 5, 100)  # id0 is active again in a later minute
    rl.hit("new", T0 + 61, 5, 100)
    assert len(rl) == 10
    assert "id0" in rl._counts and "id1" not in rl._counts and "new" in rl._counts
    assert rl.hit("id1", T0 + 62, 5, 100).remaining == 4  # starts afresh (fails open)


@pytest.mark.parametrize("sweep_per_hit", [4, 0])
def test_capacity_bound_prefers_expired(
    monkeypatch: pytest.MonkeyPatch, sweep_per_hit: int
) -> None:
    monkeypatch.setattr(ratelimit, "_SWEEP_PER_HIT", sweep_per_hit)  # 0: only the sweep when full
    rl = RateLimiter(max_identities=3)
    rl.hit("minute-only", T0, 5, 0)
    rl.hit("x", T0 + 1, 5, 100)
    rl.hit("y", T0 + 2, 5, 100)
    rl.hit("z", T0 + 60, 5, 100)  # "minute-only" has expired: it goes, not the idle "x"
    assert set(rl._counts) == {"x", "y", "z"}


def test_memory_stays_bounded_under_a_flood_of_identities() -> None:
    rl = RateLimiter(max_identities=100)
    for i in range(20_000):
        rl.hit(f"addr:{i}", T0 + i * 0.01, 100, 1000)
    stats = rl.statistics()
    assert stats["identities"] == 100
    assert stats["pending_expiries"] <= 2 * 100 + 1024 + 1


def test_max_identities_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_identities"):
        RateLimiter(max_identities=0)
