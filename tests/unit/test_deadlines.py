"""`dtq.core.deadlines`: pure, `now` passed in, no trio."""

from __future__ import annotations

from dtq.core.deadlines import Deadlines, Due


def test_due_takes_out_what_ran_out_by_now() -> None:
    d = Deadlines()
    assert d.track_lease("t1", "l1", 10.0) is True  # the first: the earliest
    assert d.track_lease("t2", "l2", 20.0) is False
    assert d.track_worker("w1", 15.0) is True
    d.add_orphan("t3", "l3")
    assert d.next_at() == 10.0
    assert d.next_at(scheduled_at=5.0) == 5.0
    assert d.due(9.0) == Due([("t3", "l3")], [], [])
    assert d.due(15.0) == Due([], [("t1", "l1")], ["w1"])
    assert d.next_at() == 20.0


def test_a_finished_or_extended_lease_is_not_due() -> None:
    d = Deadlines()
    d.track_lease("t1", "l1", 10.0)
    d.track_lease("t2", "l2", 10.0)
    d.drop_lease("t1")  # completed
    d.track_lease("t2", "l2", 30.0)  # extended: the old entry stays in the heap, stale
    assert d.due_leases(10.0) == []
    assert d.live_lease_tasks() == ["t2"]
    assert d.due_leases(30.0) == [("t2", "l2")]


def test_what_a_failed_write_took_out_is_due_again() -> None:
    d = Deadlines()
    d.track_lease("t1", "l1", 10.0)
    d.track_worker("w1", 10.0)
    due = d.due(10.0)
    d.retry_leases(due.leases, 10.0)
    d.retry_workers(due.workers, 10.0)
    d.retry_orphans([("t9", "l9")])
    assert d.due(10.0) == Due([("t9", "l9")], [("t1", "l1")], ["w1"])


def test_load_and_compaction() -> None:
    d = Deadlines()
    assert d.load([(5.0, "t1", "l1"), (3.0, "t2", "l2")], [(4.0, "w1")]) == 2
    assert d.next_at() == 3.0
    for i in range(20_000):  # leases granted and finished: the heap is compacted, not kept
        d.track_lease(f"x{i}", "l", 100.0 + i)
        d.drop_lease(f"x{i}")
    assert d.lease_plan_size() <= 10_000 + 2 * 4 + 1
