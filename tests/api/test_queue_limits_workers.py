"""Queue limits with many real workers: the SDK against a real `serve()` on 127.0.0.1,
eight workers leasing and acking concurrently, the server's running figure sampled at every
lease and every ack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from dtq import AsyncClient
from dtq.models import AckItem

from .helpers import SERVE_ADMIN_PASSWORD

WORKERS = 8


@pytest.fixture
async def sdk(server_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(server_url) as client:
        await client.login("admin", SERVE_ADMIN_PASSWORD)
        yield client


async def drain(
    server_url: str, token: str, queue: str, total: int, on_sample: list[int], held: list[int]
) -> list[str]:
    """Run WORKERS workers until `total` tasks are done; returns the done task ids."""
    done: list[str] = []
    holding = [0]

    async def sample(client: AsyncClient) -> None:
        on_sample.append((await client.get_queue(queue))["running"])
        held.append(holding[0])

    async def worker(n: int) -> None:
        async with AsyncClient(server_url, token=token) as client:
            while len(done) < total:
                got = await client.lease(f"w{n}", queues=[queue], max_tasks=2, wait=0.5)
                if not got:
                    continue
                holding[0] += len(got)
                await sample(client)
                await trio.sleep(0.005)  # the work
                holding[0] -= len(got)
                acks = [AckItem(id=t.id, lease_id=t.lease.id, status="completed")  # type: ignore[union-attr]
                        for t in got]  # fmt: skip
                await client.ack(acks)
                done.extend(t.id for t in got)
                await sample(client)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for n in range(WORKERS):
                nursery.start_soon(worker, n)
    return done


async def test_eight_workers_never_exceed_the_concurrency_limit(
    sdk: AsyncClient, server_url: str
) -> None:
    await sdk.update_queue("limited", concurrency_limit=3)
    tasks = await sdk.submit_many([{"name": "job", "queue": "limited"}] * 40)
    running: list[int] = []
    held: list[int] = []
    assert sdk.token is not None
    done = await drain(server_url, sdk.token, "limited", len(tasks), running, held)
    assert sorted(done) == sorted(t.id for t in tasks)  # every task ran once
    assert max(running) <= 3 and max(held) <= 3, (max(running), max(held))
    assert max(held) == 3  # the limit was reached, not just respected by accident
    info = await sdk.get_queue("limited")
    assert (info["running"], info["pending"]) == (0, 0)


async def test_per_key_limits_with_two_keys(sdk: AsyncClient, server_url: str) -> None:
    await sdk.update_queue("keyed", concurrency_limit_per_key=1)
    bodies = [{"name": "job", "queue": "keyed", "concurrency_key": k} for k in "ab" * 6]
    await sdk.submit_many(bodies)
    seen: dict[str, int] = {"a": 0, "b": 0}
    peak: dict[str, int] = {"a": 0, "b": 0}
    assert sdk.token is not None
    done: list[str] = []

    async def worker(n: int) -> None:
        async with AsyncClient(server_url, token=sdk.token) as client:
            while len(done) < len(bodies):
                got = await client.lease(f"k{n}", queues=["keyed"], max_tasks=3, wait=0.5)
                for t in got:
                    seen[t.concurrency_key or ""] += 1
                    key = t.concurrency_key or ""
                    peak[key] = max(peak[key], seen[key])
                await trio.sleep(0.005)
                for t in got:
                    seen[t.concurrency_key or ""] -= 1
                if got:
                    acks = [AckItem(id=t.id, lease_id=t.lease.id, status="completed")  # type: ignore[union-attr]
                            for t in got]  # fmt: skip
                    await client.ack(acks)
                    done.extend(t.id for t in got)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for n in range(WORKERS):
                nursery.start_soon(worker, n)
    assert len(done) == len(bodies)
    assert peak == {"a": 1, "b": 1}
