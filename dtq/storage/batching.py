"""What the group-commit writers (LMDB, PostgreSQL) share: an op waiting for its commit, and
how a committed batch hands each op its outcome."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import trio

from dtq.storage.base import StoreTxn, WriterStats

T = TypeVar("T")


class Pending(Generic[T]):
    """One `Store.write` call: its op, and (after the commit) whether it worked and what it
    returned or raised."""

    __slots__ = ("done", "fn", "ok", "on_commit", "ordered", "quick", "result")

    def __init__(
        self,
        fn: Callable[[StoreTxn], T],
        on_commit: Callable[[T], None] | None,
        *,
        ordered: bool = True,
        quick: bool = False,
    ) -> None:
        self.fn = fn
        self.ordered = ordered
        self.quick = quick
        self.on_commit = on_commit
        self.done = trio.Event()
        self.ok = False
        self.result: Any = None


def settle_committed(
    batch: Sequence[Pending[Any]],
    outcomes: Sequence[tuple[bool, Any]],
    elapsed_s: float,
    stats: WriterStats,
    hooks: Sequence[Callable[[int, float], None]],
) -> None:
    """After a commit, on the trio thread: count it, run the ops' `on_commit` in commit order
    (before any caller resumes), then wake every caller."""
    stats.record(len(batch), elapsed_s)
    for hook in hooks:
        hook(len(batch), elapsed_s)
    for p, (ok, result) in zip(batch, outcomes, strict=True):
        p.ok = ok
        p.result = result
        if ok and p.on_commit is not None:
            p.on_commit(result)
    for p in batch:
        p.done.set()
