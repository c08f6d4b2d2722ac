"""Waiters are indexed by queue: a new task goes to the longest-waiting waiter that can take it."""

from __future__ import annotations

from dtq.core.dispatcher import Dispatcher, Entry, Waiter


def _entry(task_id: str, queue: str = "default", name: str = "t") -> Entry:
    return Entry(task_id, queue, 1, int(task_id.split("-")[-1]), name, 0.0)


async def test_a_task_goes_to_the_oldest_waiter_that_wants_it() -> None:
    d = Dispatcher()
    only_b = Waiter(frozenset({"b"}), None, 1)
    any_queue = Waiter(None, None, 1)
    only_a = Waiter(frozenset({"a"}), None, 1)
    for w in (only_b, any_queue, only_a):
        d.add_waiter(w)
    d.push(_entry("t-1", "a"))
    assert [e.task_id for e in any_queue.claimed] == ["t-1"]  # older than only_a
    d.push(_entry("t-2", "a"))
    assert [e.task_id for e in only_a.claimed] == ["t-2"]  # any_queue is full
    d.push(_entry("t-3", "c"))
    assert not only_b.claimed
    assert d.ready_count() == 1  # nobody wanted queue c: it waits in line


async def test_departed_waiters_are_skipped_and_counted_out() -> None:
    d = Dispatcher()
    waiters = [Waiter(frozenset({"a"}), None, 1) for _ in range(200)]
    for w in waiters:
        d.add_waiter(w)
    for w in waiters[:-1]:
        d.remove_waiter(w)
    assert d.waiting_count() == 1
    d.push(_entry("t-1", "a"))
    assert [e.task_id for e in waiters[-1].claimed] == ["t-1"]


async def test_name_filters_are_respected_within_a_queue() -> None:
    d = Dispatcher()
    wants_x = Waiter(frozenset({"a"}), frozenset({"x"}), 1)
    wants_any = Waiter(frozenset({"a"}), None, 1)
    d.add_waiter(wants_x)
    d.add_waiter(wants_any)
    d.push(_entry("t-1", "a", name="y"))
    assert not wants_x.claimed
    assert [e.task_id for e in wants_any.claimed] == ["t-1"]


class CountingWaiter(Waiter):
    asked = 0

    def wants(self, entry: Entry) -> bool:
        CountingWaiter.asked += 1
        return super().wants(entry)


async def test_many_parked_waiters_on_other_queues_are_not_asked() -> None:
    d = Dispatcher()
    for _ in range(10_000):
        d.add_waiter(CountingWaiter(frozenset({"parked"}), None, 1))
    CountingWaiter.asked = 0
    d.push(_entry("t-1", "busy"))
    assert d.ready_count() == 1
    assert CountingWaiter.asked == 0
