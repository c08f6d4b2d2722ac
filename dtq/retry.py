"""Retry backoff as pure logic: about `base_s` for the first retry, doubling, capped, jittered."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 1.0
    cap_s: float = 3600.0
    jitter: float = 0.25  # +-25 %: spreads a burst of failures without losing "about 1 s"

    def delay_s(self, retry_number: int, rand: float) -> float:
        """Delay before retry number `retry_number` (1 = first retry); `rand` is in [0, 1)."""
        exponent = min(max(retry_number - 1, 0), 62)
        raw = min(self.base_s * (2.0**exponent), self.cap_s)
        return min(raw * (1.0 - self.jitter + 2.0 * self.jitter * rand), self.cap_s)
