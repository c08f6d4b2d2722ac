"""`WorkerConfig`: the worker's tunables in one frozen value, still set as `Worker(...)`
keywords and attributes (as `dtq worker --concurrency` does)."""

from __future__ import annotations

import dataclasses

import pytest

from dtq.client.worker import WORKER_RETRY, Worker, WorkerConfig


def test_keywords_become_the_config() -> None:
    worker = Worker(queues=("a", "b"), concurrency=8, lease_seconds=30, any_name=True)
    assert worker.config == WorkerConfig(
        queues=["a", "b"], concurrency=8, lease_seconds=30, any_name=True
    )
    assert (worker.queues, worker.concurrency, worker.lease_seconds) == (["a", "b"], 8, 30)
    assert Worker().config == WorkerConfig()  # the same defaults in one place
    assert Worker(queues=[]).queues is None


def test_setting_an_attribute_replaces_the_frozen_config() -> None:
    worker = Worker()
    before = worker.config
    worker.concurrency = 3
    worker.queues = ["q"]
    assert before.concurrency == 4 and before.queues is None
    assert (worker.config.concurrency, worker.config.queues) == (3, ["q"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        worker.config.concurrency = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="at least 1"):
        worker.concurrency = 0
    with pytest.raises(ValueError, match="at least 1"):
        Worker(concurrency=0)


def test_the_worker_backs_off_with_the_shared_policy() -> None:
    assert WorkerConfig().retry is WORKER_RETRY
    # 0.4 s for the first failure, doubling, capped at 10 s; jitter x[0.5, 1.5).
    assert [WORKER_RETRY.delay_s(n, 0.5) for n in (1, 2, 3, 10)] == [0.4, 0.8, 1.6, 10.0]
    assert WORKER_RETRY.delay_s(1, 0.0) == pytest.approx(0.2)
