"""The login throttle on a shared store: one record per username in the database.

The rules are `ThrottleRules` (see `dtq.core.auth.throttle`); what differs is where the record
lives. Each attempt is one write that reads the username's record under a row lock, applies
the rule and stores the result, so attempts at two servers take turns and all count: a
guesser spreading attempts over N servers gets no more of them than at one. Time is the
database's (`tx.now`), the same for every server. A refused attempt rolls its write back and
changes nothing; each attempt also drops the records whose time has passed, so what a guesser
inventing usernames leaves behind decays as it does in one server's memory.
"""

from __future__ import annotations

from typing import Any

from dtq.core.auth.throttle import Failures, ThrottleRules
from dtq.storage.base import SharedTxn


class SharedLoginThrottle:
    def __init__(self, store: Any, rules: ThrottleRules | None = None) -> None:
        self._store = store
        self.rules = rules or ThrottleRules()

    async def begin(self, username: str) -> None:
        """As `LoginThrottle.begin`: counted as a failure until `succeeded`; `RateLimited`
        while the username is locked."""
        rules = self.rules

        def op(tx: SharedTxn) -> None:
            tx.forget_login_failures()
            raw = tx.login_failures(username)
            entry = rules.admit(None if raw is None else Failures(*raw), tx.now)
            record = (entry.count, entry.last_s, entry.locked_until_s)
            tx.put_login_failures(username, record, rules.forget_at(entry))

        await self._store.write(op)

    async def succeeded(self, username: str) -> None:
        await self._store.write(lambda tx: tx.clear_login_failures(username))
