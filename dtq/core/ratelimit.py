"""Rate limits: two fixed windows per identity (a minute and an hour), pure and in memory.

Windows are aligned to the epoch (a minute window is ``[k*60, (k+1)*60)``), so every identity's
window resets at the same instants and `X-RateLimit-Reset` is a round timestamp. A request is
counted only when it is allowed, and then in both windows; a denied request changes nothing.

Runs on every request on the trio thread: one dict lookup, a few int operations, no locks.
Memory is bounded two ways: an identity whose windows have all ended is dropped (lazily, a
few entries per call, from a heap ordered by expiry), and at most `max_identities` are kept
(when full, the identity idle the longest, to the minute, is dropped, and starts afresh if it
comes back; this fails open for that identity rather than locking new callers out).
"""

from __future__ import annotations

import heapq
import math

import msgspec

from dtq.errors import RateLimited

MINUTE_S = 60
HOUR_S = 3600
_SWEEP_PER_HIT = 4  # expired entries examined per call: keeps the cost flat and amortized


class RateDecision(msgspec.Struct, frozen=True, gc=False):
    """The verdict on one request, with the numbers for the tighter window.

    "Tighter" is the enabled window with fewer requests remaining (the later-resetting one on a
    tie). When both windows are disabled, `limit` is 0 ("unlimited") and `headers()` is empty.
    """

    allowed: bool
    limit: int  # requests allowed in the reported window; 0 = no limit applies
    remaining: int  # requests left in that window after this one
    reset: int  # unix time when that window resets
    retry_after_s: int = 0  # >= 1 when denied: when every exhausted window has reset
    window: str = ""  # "minute" | "hour" | "" (unlimited)

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*`` (and ``Retry-After`` when denied); empty when unlimited."""
        if self.limit == 0:
            return {}
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers

    def error(self) -> RateLimited:
        """The error to raise for a denied request."""
        return RateLimited(
            f"Rate limit exceeded: {self.limit} requests per {self.window}; "
            f"retry in {self.retry_after_s} s",
            retry_after_s=self.retry_after_s,
            reason="rate_limited",
            limit=self.limit,
            window=self.window,
        )


UNLIMITED = RateDecision(allowed=True, limit=0, remaining=0, reset=0)


class _Counts:
    __slots__ = ("expires", "hour", "hour_count", "minute", "minute_count")

    def __init__(self, minute: int, hour: int) -> None:
        self.minute = minute  # index of the current minute window (now // 60)
        self.minute_count = 0
        self.hour = hour
        self.hour_count = 0
        self.expires = 0  # when every window this identity is limited by has ended


class RateLimiter:
    def __init__(self, *, max_identities: int = 100_000) -> None:
        if max_identities < 1:
            raise ValueError("max_identities must be at least 1")
        self._max_identities = max_identities
        self._counts: dict[str, _Counts] = {}
        self._expiry: list[tuple[int, str]] = []  # heap of (expires, identity); may hold stale

    def __len__(self) -> int:
        return len(self._counts)

    def statistics(self) -> dict[str, int]:
        return {"identities": len(self._counts), "pending_expiries": len(self._expiry)}

    def hit(self, identity: str, now: float, per_minute: int, per_hour: int) -> RateDecision:
        """Count one request by `identity` at `now` (if allowed) and say whether it may proceed.

        `per_minute` / `per_hour` are this identity's limits (its own override or the global
        setting); 0 or less disables that window.
        """
        expiry = self._expiry
        if expiry and expiry[0][0] <= now:
            self._sweep(now, _SWEEP_PER_HIT)
        if per_minute <= 0 and per_hour <= 0:
            return UNLIMITED

        minute = int(now // MINUTE_S)
        hour = minute // (HOUR_S // MINUTE_S)
        counts_by_id = self._counts
        counts = counts_by_id.get(identity)
        if counts is None:
            counts = self._add(identity, minute, hour, now)
        elif minute > counts.minute:
            counts.minute = minute
            counts.minute_count = 0
            if hour > counts.hour:
                counts.hour = hour
                counts.hour_count = 0
            # Move to the end once a minute, so the dict's order is "least recently active
            # minute first" and a full limiter drops idle identities before busy ones.
            del counts_by_id[identity]
            counts_by_id[identity] = counts
        expires = (counts.hour + 1) * HOUR_S if per_hour > 0 else (counts.minute + 1) * MINUTE_S
        if expires > counts.expires:
            counts.expires = expires
            heapq.heappush(expiry, (expires, identity))
            if len(expiry) > 2 * self._max_identities + 1024:
                self._rebuild_expiry()

        allowed = (per_minute <= 0 or counts.minute_count < per_minute) and (
            per_hour <= 0 or counts.hour_count < per_hour
        )
        if allowed:
            counts.minute_count += 1
            counts.hour_count += 1

        # Report the tighter window: fewer remaining; on a tie the hour (it resets later).
        if per_minute > 0:
            limit, remaining = per_minute, max(per_minute - counts.minute_count, 0)
            reset, window = (counts.minute + 1) * MINUTE_S, "minute"
            if per_hour > 0 and per_hour - counts.hour_count <= remaining:
                limit, remaining = per_hour, max(per_hour - counts.hour_count, 0)
                reset, window = (counts.hour + 1) * HOUR_S, "hour"
        else:
            limit, remaining = per_hour, max(per_hour - counts.hour_count, 0)
            reset, window = (counts.hour + 1) * HOUR_S, "hour"

        if allowed:
            return RateDecision(True, limit, remaining, reset, 0, window)
        # Denied: the reported window is exhausted and resets last among the exhausted ones.
        retry_after_s = max(math.ceil(reset - now), 1)
        return RateDecision(False, limit, 0, reset, retry_after_s, window)

    def _add(self, identity: str, minute: int, hour: int, now: float) -> _Counts:
        if len(self._counts) >= self._max_identities:
            self._sweep(now, len(self._expiry))
            while len(self._counts) >= self._max_identities:
                del self._counts[next(iter(self._counts))]
        counts = self._counts[identity] = _Counts(minute, hour)
        return counts

    def _rebuild_expiry(self) -> None:
        # Identities evicted for capacity leave their heap items behind; under a flood of new
        # identities those would pile up for an hour. Rebuilding costs O(n) once per n pushes.
        self._expiry = [(c.expires, i) for i, c in self._counts.items()]
        heapq.heapify(self._expiry)

    def _sweep(self, now: float, budget: int) -> None:
        """Drop up to `budget` identities whose windows have all ended."""
        expiry, counts_by_id = self._expiry, self._counts
        while budget > 0 and expiry and expiry[0][0] <= now:
            _, identity = heapq.heappop(expiry)
            counts = counts_by_id.get(identity)
            # Stale heap items (the identity was extended, evicted or re-added) are skipped.
            if counts is not None and counts.expires <= now:
                del counts_by_id[identity]
            budget -= 1
