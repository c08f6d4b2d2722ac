"""Rate limits on a shared store: one budget per key across every server.

Same windows and verdicts as `RateLimiter` (a minute and an hour, aligned to the epoch), but
the counts live in the store (`SharedTxn.add_hits`), so a key gets its 100 a minute in total,
not 100 per server. A request is still decided at once on the trio thread, without a database
round trip: from the window's total as last read from the store plus this server's hits not yet
written. Every `flush_every_s` one write adds those hits and reads back the totals of every
window in use here, which also brings in what the other servers counted meanwhile. So a key
can overshoot its limit by at most what the servers let through for it in one flush interval
(0.2 s by default) before they heard of each other's counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import structlog
import trio

from dtq.core.ratelimit import HOUR_S, MINUTE_S, UNLIMITED, RateDecision, RateLimiter
from dtq.errors import Unavailable

log = structlog.get_logger("dtq.ratelimit")

# counter key: (identity, "m" | "h", window index); stored as "m:<index>:<identity>"
_Key = tuple[str, str, int]


def _store_key(key: _Key) -> str:
    return f"{key[1]}:{key[2]}:{key[0]}"


def _expires(key: _Key) -> float:
    span = MINUTE_S if key[1] == "m" else HOUR_S
    return float((key[2] + 1) * span)


class SharedRateLimiter(RateLimiter):
    def __init__(self, store: Any, *, flush_every_s: float = 0.2) -> None:
        super().__init__()
        self._store = store
        self._flush_every_s = flush_every_s
        self._totals: dict[_Key, int] = {}  # as the store last said (our flushed hits included)
        self._unflushed: dict[_Key, int] = {}

    def statistics(self) -> dict[str, int]:
        return {"identities": len(self._totals), "pending_expiries": len(self._unflushed)}

    def _used(self, key: _Key) -> int:
        return self._totals.get(key, 0) + self._unflushed.get(key, 0)

    def hit(self, identity: str, now: float, per_minute: int, per_hour: int) -> RateDecision:
        if per_minute <= 0 and per_hour <= 0:
            return UNLIMITED
        minute = int(now // MINUTE_S)
        km: _Key = (identity, "m", minute)
        kh: _Key = (identity, "h", minute // (HOUR_S // MINUTE_S))
        used_m, used_h = self._used(km), self._used(kh)
        allowed = (per_minute <= 0 or used_m < per_minute) and (per_hour <= 0 or used_h < per_hour)
        if allowed:
            for key in (km, kh):
                self._unflushed[key] = self._unflushed.get(key, 0) + 1
            used_m, used_h = used_m + 1, used_h + 1
        else:  # still read back at the next flush, so a denied key sees others' counts
            self._unflushed.setdefault(km, 0)
            self._unflushed.setdefault(kh, 0)
        # Report the tighter window: fewer remaining; on a tie the hour (it resets later).
        if per_minute > 0:
            limit, remaining = per_minute, max(per_minute - used_m, 0)
            reset, window = int(_expires(km)), "minute"
            if per_hour > 0 and per_hour - used_h <= remaining:
                limit, remaining = per_hour, max(per_hour - used_h, 0)
                reset, window = int(_expires(kh)), "hour"
        else:
            limit, remaining = per_hour, max(per_hour - used_h, 0)
            reset, window = int(_expires(kh)), "hour"
        if allowed:
            return RateDecision(True, limit, remaining, reset, 0, window)
        return RateDecision(False, limit, 0, reset, max(math.ceil(reset - now), 1), window)

    async def flush(self, now: float) -> int:
        """Write this server's hits, read back every window in use; returns hits written."""
        for key in [k for k in self._totals if _expires(k) <= now]:
            del self._totals[key]  # its window ended
        pending, self._unflushed = self._unflushed, {}
        keys = [k for k in sorted(set(pending) | set(self._totals)) if _expires(k) > now]
        if not keys:
            return 0
        rows: Sequence[tuple[str, float, int]] = [
            (_store_key(k), _expires(k), pending.get(k, 0)) for k in keys
        ]
        try:
            totals = await self._store.write(lambda tx: tx.add_hits(rows))
        except BaseException:
            for key, n in pending.items():  # not counted yet: keep them for the next flush
                self._unflushed[key] = self._unflushed.get(key, 0) + n
            raise
        self._totals.update(zip(keys, totals, strict=True))
        return sum(pending.values())

    async def run(
        self, clock: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(self._flush_every_s)
            try:
                await self.flush(clock.now())
            except Unavailable as exc:
                log.warning("rate-limit counts not shared", error=exc.message)
