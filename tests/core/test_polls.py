"""Last-poll records: what `workers_polling` and `explain` read, and that they stay bounded
however many worker ids come and go."""

from __future__ import annotations

from dtq.core.polls import Polls

TIMEOUT_S = 30.0


def test_workers_polling_counts_recent_workers_of_the_queue_and_of_any_queue() -> None:
    polls = Polls(TIMEOUT_S)
    polls.record("a", ["q"], None, now=100.0)
    polls.record("b", None, ["job"], now=101.0)  # any queue, one name
    polls.record("c", ["other"], None, now=102.0)
    assert polls.workers_polling("q", since=90.0) == 2  # a by name, b for any queue
    assert polls.workers_polling("q", since=100.5) == 1  # a is too old by then
    # a and c gave no names (any name), b asked for "job" only
    assert polls.name_polled("job", since=101.0) and polls.name_polled("x", since=102.0)
    assert polls.name_polled("job", since=102.5) is False
    polls.record("d", ["q"], ["job"], now=103.0)
    assert polls.name_polled("job", since=102.5) and not polls.name_polled("x", since=102.5)


def test_records_older_than_the_worker_timeout_are_dropped_while_recording() -> None:
    polls = Polls(TIMEOUT_S)
    now = 1000.0
    # 10,000 short-lived workers, each polling once, one every 10 ms, over 100 s
    for i in range(10_000):
        polls.record(f"worker-{i}", [f"q-{i % 7}"], [f"name-{i}"], now)
        # never more than what the last two timeouts can hold (a sweep once per timeout)
        assert polls.size() <= 2 * 2 * (TIMEOUT_S / 0.01) + 4
        now += 0.01
    assert polls.size() < 20_000  # without the sweep: 10,000 worker and 10,000 name entries
    last = now - 0.01
    # what the timeout window holds is still all there
    assert polls.workers_polling("q-0", since=last - TIMEOUT_S) == sum(
        1 for i in range(10_000) if i % 7 == 0 and 1000.0 + i * 0.01 >= last - TIMEOUT_S - 1e-9
    )
    assert polls.name_polled("name-9999", since=last)


def test_a_quiet_period_then_one_poll_forgets_everything_older() -> None:
    polls = Polls(TIMEOUT_S)
    for i in range(100):
        polls.record(f"w{i}", ["q"], ["n"], now=10.0)
    polls.record("late", ["q"], None, now=10.0 + 3 * TIMEOUT_S)
    assert polls.by_queue == {"q": {"late": 10.0 + 3 * TIMEOUT_S}}
    assert polls.by_name == {"": 10.0 + 3 * TIMEOUT_S}
    assert polls.workers_polling("q", since=0.0) == 1


def test_without_a_timeout_nothing_is_dropped_until_pruned() -> None:
    polls = Polls()
    polls.record("a", ["q"], ["n"], now=1.0)
    polls.record("b", ["q"], ["n"], now=1e9)
    assert polls.workers_polling("q", since=0.0) == 2
    polls.prune(before=2.0)
    assert polls.workers_polling("q", since=0.0) == 1 and "n" in polls.by_name
