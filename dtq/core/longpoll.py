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


class Ticket:
    """A long poll parked on a shared store: woken to claim again in the database."""

    __slots__ = ("event", "names", "queues")

    def __init__(self, queues: frozenset[str] | None, names: frozenset[str] | None) -> None:
        self.queues = queues
        self.names = names
        self.event = trio.Event()

    def wants(self, queue: str, name: str) -> bool:
        return (self.queues is None or queue in self.queues) and (
            self.names is None or name in self.names
        )


class SharedWaiters:
    """The long polls of a shared store (`Store.shared`): no task ids are handed over here,
    since another server may claim any task first; a woken poll claims in the database and
    parks again if it got nothing.

    A local commit that made a task ready wakes the oldest poll that wants it (one per task,
    so a create does not stampede every waiter); the store's cross-server signal and the
    safety poll wake them all (they carry no detail). A ticket is taken *before* the claim that
    comes up empty, so a task that becomes ready between that claim and the wait is not missed.
    """

    def __init__(self) -> None:
        self._tickets: dict[Ticket, None] = {}  # arrival order

    def __len__(self) -> int:
        return len(self._tickets)

    def ticket(self, queues: frozenset[str] | None, names: frozenset[str] | None) -> Ticket:
        ticket = Ticket(queues, names)
        self._tickets[ticket] = None
        return ticket

    def done(self, ticket: Ticket) -> None:
        self._tickets.pop(ticket, None)

    def wake_for(self, queue: str, name: str) -> None:
        """A task of (queue, name) became ready here: the oldest idle poll that wants it."""
        for ticket in self._tickets:
            if not ticket.event.is_set() and ticket.wants(queue, name):
                ticket.event.set()
                return

    def wake_all(self) -> None:
        for ticket in self._tickets:
            ticket.event.set()

    @staticmethod
    async def wait(ticket: Ticket, until_trio: float) -> None:
        """Until the ticket is woken or the trio clock reaches `until_trio`."""
        with trio.move_on_at(until_trio):
            await ticket.event.wait()
