"""The long poll: a lease call with nothing ready parks a waiter until a task arrives or
`wait` passes. The dispatcher hands it entries (still to be leased) or a create leases a task
to it in its own commit (`granted`); this module only waits, and cleans up when cancelled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from dtq.core.dispatcher import Dispatcher, Entry, Waiter


async def wait_for_tasks(
    dispatcher: Dispatcher,
    orphan: Callable[[list[Any]], None],
    closing: Callable[[], bool],
    queues: frozenset[str] | None,
    names: frozenset[str] | None,
    max_tasks: int,
    wait_s: float,
    worker_id: str,
    lease_s: float,
    holder: str | None = None,
) -> tuple[list[Entry], list[Any]]:
    """(entries handed over, still to be leased) or (none, tasks already leased to us).

    `orphan` takes tasks leased to us after we were cancelled; `closing()` says the server is
    shutting down (stop waiting again after a reservation fell through)."""
    deadline = trio.current_time() + wait_s
    while True:
        waiter = Waiter(queues, names, max_tasks, worker_id, lease_s, holder)
        dispatcher.add_waiter(waiter)
        try:
            with trio.move_on_at(deadline):
                await waiter.event.wait()
            if waiter.reserved and not waiter.event.is_set():
                # A create is committing a task leased to us: its outcome decides.
                with trio.CancelScope(shield=True):
                    await waiter.event.wait()
        except BaseException:
            waiter.gone = True
            dispatcher.remove_waiter(waiter)
            dispatcher.give_back(waiter.claimed)  # to the next waiter, or back in line
            orphan(waiter.granted)  # leased to us, but we are not there to say so
            raise
        dispatcher.remove_waiter(waiter)
        if waiter.granted:
            return [], waiter.granted
        claimed = waiter.claimed
        if claimed:
            if len(claimed) < max_tasks:
                claimed.extend(dispatcher.take(queues, names, max_tasks - len(claimed)))
            return claimed, []
        if not waiter.reserved or closing() or trio.current_time() >= deadline:
            return [], []
        # A reservation fell through (replayed idempotency key, not due): wait again.
