"""Cron ticks: 5-field expressions in an IANA time zone, as pure functions of time.

Built on `cronsim` (the parser Healthchecks.io uses, with no dependencies). Its DST rules
are those of Debian's cron: a wall time skipped by a spring-forward fires once at the
transition, and a wall time that occurs twice in autumn fires once, at its first occurrence.
"""

from __future__ import annotations

from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from dtq.errors import InvalidRequest

MAX_TICKS_SCANNED = 100_000  # catching up a long downtime of a `* * * * *` schedule


def zone(name: str, field: str = "timezone") -> tzinfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidRequest(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')",
            field=field,
            reason="unknown time zone",
        ) from None


def check(expr: str, field: str = "cron") -> None:
    """A 400 naming `field` unless `expr` is a valid 5-field cron expression."""
    if len(expr.split()) != 5:
        raise InvalidRequest(
            "cron must have 5 fields: minute hour day-of-month month day-of-week",
            field=field,
            reason="expected 5 fields",
        )
    try:
        next(CronSim(expr, datetime(2000, 1, 1, tzinfo=ZoneInfo("UTC"))))
    except (CronSimError, StopIteration) as exc:
        raise InvalidRequest(
            f"invalid cron expression {expr!r}: {exc or 'it never fires'}",
            field=field,
            reason=str(exc) or "never fires",
        ) from None


def next_after(expr: str, tz: str, t: float) -> float | None:
    """The first tick strictly after epoch time `t` (None: it never fires again)."""
    start = datetime.fromtimestamp(t, ZoneInfo(tz))
    try:
        return next(CronSim(expr, start)).timestamp()
    except StopIteration:
        return None


def last_at_or_before(expr: str, tz: str, first: float, now: float) -> float:
    """The latest tick in [first, now], given that `first` is a tick and `first <= now`."""
    it = CronSim(expr, datetime.fromtimestamp(first, ZoneInfo(tz)))
    last = first
    for _ in range(MAX_TICKS_SCANNED):
        try:
            t = next(it).timestamp()
        except StopIteration:
            break
        if t > now:
            break
        last = t
    return last
