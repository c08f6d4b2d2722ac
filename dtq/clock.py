"""Time for the core: wall-clock seconds that advance with trio's clock.

Deadlines (lease expiry, run_at, heartbeats) are stored as wall-clock epoch seconds so they
survive a restart, but the core reads them through a `Clock` so tests can drive time with
`trio.testing.MockClock` and pure logic can take `now` as a plain argument.
"""

from __future__ import annotations

import time
from typing import Protocol

import trio


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, epoch seconds."""
        ...

    def to_trio(self, wall_s: float) -> float:
        """The trio clock reading at which wall time `wall_s` is reached."""
        ...


class TrioClock:
    """Wall time anchored once, then advanced by `trio.current_time()`.

    Under a MockClock (autojump) wall time jumps with it, which makes lease and retry tests
    instant and deterministic. Must be created inside `trio.run`.
    """

    def __init__(self, wall_anchor_s: float | None = None) -> None:
        self._wall0 = time.time() if wall_anchor_s is None else wall_anchor_s
        self._trio0 = trio.current_time()

    def now(self) -> float:
        return self._wall0 + (trio.current_time() - self._trio0)

    def to_trio(self, wall_s: float) -> float:
        return self._trio0 + (wall_s - self._wall0)


class ScaledClock(TrioClock):
    """Test only (`DTQ_ENV=test`): wall time from `start_s` (default: now), running `speed`
    times as fast as trio's clock. Lets an end-to-end test watch minutes of cron ticks in
    seconds; a restarted server given a later `start_s` carries on where the last one was."""

    def __init__(self, speed: float, start_s: float | None = None) -> None:
        super().__init__(start_s)
        self._speed = speed

    def now(self) -> float:
        return self._wall0 + (trio.current_time() - self._trio0) * self._speed

    def to_trio(self, wall_s: float) -> float:
        return self._trio0 + (wall_s - self._wall0) / self._speed
