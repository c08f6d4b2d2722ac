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

`ThrottleRules.admit` is the rule on one username's record; `LoginThrottle` keeps the records
in this process (one server). On a shared store every server reads and writes the same record
in the database instead (`dtq.core.auth.shared_throttle`), so N servers do not give a guesser
N times the attempts.
"""

from __future__ import annotations

import math

from dtq.errors import RateLimited

FREE_FAILURES = 10
BASE_LOCK_S = 1.0
MAX_LOCK_S = 15 * 60.0
DECAY_S = 15 * 60.0
MAX_ENTRIES = 20_000  # ~8 MB at worst (64-character names); flushing one takes 20,000 failures


class Failures:
    """One username's record: failures counted, the last one's time, the end of its lock."""

    __slots__ = ("count", "last_s", "locked_until_s")

    def __init__(self, count: int = 0, last_s: float = 0.0, locked_until_s: float = 0.0) -> None:
        self.count = count
        self.last_s = last_s
        self.locked_until_s = locked_until_s


class ThrottleRules:
    """The rules, on one record at a time; no storage."""

    def __init__(
        self,
        *,
        free_failures: int = FREE_FAILURES,
        base_lock_s: float = BASE_LOCK_S,
        max_lock_s: float = MAX_LOCK_S,
        decay_s: float = DECAY_S,
    ) -> None:
        if free_failures < 0 or base_lock_s <= 0 or max_lock_s < base_lock_s or decay_s <= 0:
            raise ValueError("login throttle: bad parameters")
        self._free = free_failures
        self._base_s = base_lock_s
        self._max_s = max_lock_s
        self._decay_s = decay_s

    @staticmethod
    def wait_s(entry: Failures | None, now: float) -> int:
        """Seconds until the username may try again (0: now)."""
        if entry is None or entry.locked_until_s <= now:
            return 0
        return max(math.ceil(entry.locked_until_s - now), 1)

    def admit(self, entry: Failures | None, now: float) -> Failures:
        """The record after one more attempt, counted as a failure (`entry` is changed in
        place when given). `RateLimited` while locked: then nothing changes."""
        if entry is not None:
            if (wait_s := self.wait_s(entry, now)) > 0:
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
        else:
            entry = Failures()
        entry.count += 1
        entry.last_s = now
        beyond = entry.count - self._free
        if beyond >= 0:
            # 2.0**n raises OverflowError past n = 1023; a product past the float range is inf.
            lock_s = min(self._base_s * 2.0 ** min(beyond, 1023), self._max_s)
            entry.locked_until_s = now + lock_s
        return entry

    def forget_at(self, entry: Failures) -> float:
        """When the record may be dropped: its lock is over and its failures have decayed."""
        return max(entry.last_s, entry.locked_until_s) + self._decay_s


class LoginThrottle(ThrottleRules):
    """The records in this process's memory: the throttle of a server that is the only one."""

    def __init__(
        self,
        *,
        free_failures: int = FREE_FAILURES,
        base_lock_s: float = BASE_LOCK_S,
        max_lock_s: float = MAX_LOCK_S,
        decay_s: float = DECAY_S,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        super().__init__(free_failures=free_failures, base_lock_s=base_lock_s,
                         max_lock_s=max_lock_s, decay_s=decay_s)  # fmt: skip
        if max_entries < 1:
            raise ValueError("login throttle: max_entries must be at least 1")
        self._max_entries = max_entries
        # Insertion order is "least recently failed first" (an entry moves to the end on each
        # failure), so eviction drops the stalest record.
        self._entries: dict[str, Failures] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def retry_after_s(self, username: str, now: float) -> int:
        """Seconds until `username` may try again (0: now)."""
        return self.wait_s(self._entries.get(username), now)

    def begin(self, username: str, now: float) -> None:
        """Admit one login attempt, counted as a failure until `succeeded` says otherwise.

        `RateLimited` (with `retry_after_s`) while the username is locked; nothing is counted then.
        """
        entries = self._entries
        entry = entries.get(username)
        if entry is None and len(entries) >= self._max_entries:
            del entries[next(iter(entries))]
        entry = self.admit(entry, now)
        entries.pop(username, None)
        entries[username] = entry  # at the end: the most recent

    def succeeded(self, username: str) -> None:
        """The password was right: forget the failures."""
        self._entries.pop(username, None)
