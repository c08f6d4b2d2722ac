"""The per-account login throttle: exponential back-off after repeated failures, pure logic.

The per-address rate limit (`dtq.core.ratelimit`) slows one client; this slows guessing one
account's password from many addresses. Rules, per username (known or not, so a 429 does not
tell which usernames exist):

- an attempt counts as a failure when it starts, and a correct password clears the record
  again, so concurrent guesses still in the password hash are counted too;
- the first `free_failures - 1` (9) failures cost nothing; from the 10th on, each failure locks
  the username for a window that doubles, from `base_lock_s` (1 s) up to `max_lock_s` (15
  minutes, reached at the 21st);
- while locked, attempts are refused before any password is checked and change nothing, so a
  refused attempt reveals nothing and cannot extend the lock;
- failures are forgotten after `decay_s` (15 minutes) without one once the lock has ended, and
  no lock outlasts `max_lock_s`: a correct password after the window always works (and clears
  the record), so no account is ever locked for good; a guesser who keeps trying is held to one
  guess per `max_lock_s`.

Memory is bounded: at most `max_entries` usernames; when full the one whose last failure is the
oldest is dropped (it starts afresh if it comes back).
"""

from __future__ import annotations

import math

from dtq.errors import RateLimited

FREE_FAILURES = 10
BASE_LOCK_S = 1.0
MAX_LOCK_S = 15 * 60.0
DECAY_S = 15 * 60.0
MAX_ENTRIES = 20_000  # ~8 MB at worst (64-character names); flushing one takes 20,000 failures


class _Failures:
    __slots__ = ("count", "last_s", "locked_until_s")

    def __init__(self) -> None:
        self.count = 0
        self.last_s = 0.0
        self.locked_until_s = 0.0


class LoginThrottle:
    def __init__(
        self,
        *,
        free_failures: int = FREE_FAILURES,
        base_lock_s: float = BASE_LOCK_S,
        max_lock_s: float = MAX_LOCK_S,
        decay_s: float = DECAY_S,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        if free_failures < 0 or base_lock_s <= 0 or max_lock_s < base_lock_s or decay_s <= 0:
            raise ValueError("login throttle: bad parameters")
        if max_entries < 1:
            raise ValueError("login throttle: max_entries must be at least 1")
        self._free = free_failures
        self._base_s = base_lock_s
        self._max_s = max_lock_s
        self._decay_s = decay_s
        self._max_entries = max_entries
        # Insertion order is "least recently failed first" (an entry moves to the end on each
        # failure), so eviction drops the stalest record.
        self._entries: dict[str, _Failures] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after_s(self, username: str, now: float) -> int:
        """Seconds until `username` may try again (0: now)."""
        entry = self._entries.get(username)
        if entry is None or entry.locked_until_s <= now:
            return 0
        return max(math.ceil(entry.locked_until_s - now), 1)

    def begin(self, username: str, now: float) -> None:
        """Admit one login attempt, counted as a failure until `succeeded` says otherwise.

        `RateLimited` (with `retry_after_s`) while the username is locked; nothing is counted then.
        """
        entries = self._entries
        entry = entries.get(username)
        if entry is not None:
            if entry.locked_until_s > now:
                wait_s = max(math.ceil(entry.locked_until_s - now), 1)
                raise RateLimited(
                    f"Too many failed logins for this username; retry in {wait_s} s",
                    retry_after_s=wait_s,
                    reason="login_throttled",
                    field="username",
                )
            # Quiet time starts when the lock ends, not at the last failure: otherwise waiting
            # out the longest lock (15 min) would itself reset the count, and a guesser
            # would get another batch of cheap attempts every half hour.
            if now - max(entry.last_s, entry.locked_until_s) >= self._decay_s:
                entry.count = 0
            del entries[username]  # re-inserted below, at the end (most recent)
        else:
            if len(entries) >= self._max_entries:
                del entries[next(iter(entries))]
            entry = _Failures()
        entries[username] = entry
        entry.count += 1
        entry.last_s = now
        beyond = entry.count - self._free
        if beyond >= 0:
            # 2.0**n raises OverflowError past n = 1023; a product past the float range is inf.
            lock_s = min(self._base_s * 2.0 ** min(beyond, 1023), self._max_s)
            entry.locked_until_s = now + lock_s

    def succeeded(self, username: str) -> None:
        """The password was right: forget the failures."""
        self._entries.pop(username, None)
