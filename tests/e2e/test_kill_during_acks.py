"""`kill -9` while workers batch-ack: nothing acknowledged is lost, nothing is recorded twice,
and the crash fails no task (issue 8, finding 6).

A real `dtq serve` process; workers (one API key, so one holder) lease tasks and report them in
batches (`POST /api/v1/tasks/ack`). A few times, once enough acks got a 2xx in the current run,
the server is SIGKILLed with acks in flight and restarted on the same data directory. A worker
whose ack got no answer keeps its batch and sends it again to the restarted server with the
same lease ids.

Just before each kill two more leases are taken: a *survivor* keeps working through the
downtime, which lasts until its lease has run out, and reports after the restart (the restart
gives live leases their own length again, so it must succeed); a *vanished* worker never
reports (its tasks must come back without using a retry: they have `retry_count` 0, and
before issue 8 they failed for good with `lease_expired`).

At the end: every item acked with a 2xx is completed with the result it carried, no task got
two 2xx acks, every task is completed (none lost, none failed by the crash).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from .conftest import BOUND_S, START_S, ServerProcess, bearer, login, spawn_server

pytestmark = pytest.mark.e2e

TASKS = 600
WORKERS = 4
KILLS = 4
ACKS_PER_RUN = 60  # 2xx-acked items in one run before the kill
LEASE_S = 5.0  # short: leases granted to no one (response lost in the crash) come back soon
STRANDED_LEASE_S = 2.0  # the survivor's and the vanished worker's: the downtime outlasts it
ENV = {"DTQ_RATE_LIMIT_PER_MINUTE": "0", "DTQ_RATE_LIMIT_PER_HOUR": "0"}


@dataclass
class Ledger:
    """What the workers were told, by 2xx answers only."""

    recorded: dict[str, Any] = field(default_factory=dict)  # task id -> result acked with a 2xx
    doubles: list[str] = field(default_factory=list)  # a second 2xx ack for the same task
    acked_this_run: int = 0

    def ok(self, task_id: str, result: Any) -> None:
        if task_id in self.recorded:
            self.doubles.append(task_id)
        self.recorded[task_id] = result
        self.acked_this_run += 1


@dataclass
class Worker:
    name: str
    unanswered: list[dict[str, Any]] = field(default_factory=list)  # acks sent, no answer
    must_succeed: bool = False  # never sent before: no answer was lost, so each item must be ok
    lease_expires_at: float = 0.0  # epoch seconds, of its stranded leases


async def run_workers(
    server: ServerProcess, headers: dict[str, str], admin: dict[str, str], workers: list[Worker],
    ledger: Ledger, run: int, kill_after: int | None,
) -> Worker | None:  # fmt: skip
    """Until the server dies (SIGKILLed here once `kill_after` items were acked in this run)
    or, with `kill_after=None`, until every task is completed. Returns the survivor of the
    kill, if it got tasks."""
    ledger.acked_this_run = 0
    killed = trio.Event()
    all_done = trio.Event()
    survivor: list[Worker] = []

    async def strand(client: httpx.AsyncClient) -> None:
        """Leases that the crash will find live: a survivor's and a vanished worker's."""
        for name in (f"survivor-{run}", f"vanished-{run}"):
            reply = await client.post(
                "/api/v1/tasks/lease",
                json={"worker_id": name, "max_tasks": 5, "wait": 0,
                      "lease_seconds": STRANDED_LEASE_S},
                headers=headers,
            )  # fmt: skip
            assert reply.status_code == 200, reply.text
            leased = reply.json()["data"]
            if name.startswith("survivor") and leased:
                acks = [{"id": t["id"], "lease_id": t["lease"]["id"], "status": "completed",
                         "result": {"by": name, "run": run, "task": t["id"]}}
                        for t in leased]  # fmt: skip
                expiry = max(parse_ts(t["lease"]["expires_at"]) for t in leased)
                survivor.append(Worker(name, acks, must_succeed=True, lease_expires_at=expiry))

    async def send_acks(client: httpx.AsyncClient, worker: Worker) -> bool:
        """False when the server is gone (the batch stays unanswered, for the next run)."""
        try:
            reply = await client.post(
                "/api/v1/tasks/ack", json={"acks": worker.unanswered}, headers=headers
            )
        except httpx.TransportError:
            return False
        assert reply.status_code == 200, reply.text
        sent = {a["id"]: a for a in worker.unanswered}
        for outcome in reply.json()["data"]["results"]:
            assert outcome["ok"] or not worker.must_succeed, (worker.name, outcome)
            if outcome["ok"]:
                assert outcome["status"] == "completed", outcome
                ledger.ok(outcome["id"], sent[outcome["id"]]["result"])
            else:  # reported before the crash (its answer lost) or the lease ran out meanwhile
                assert outcome["error"]["code"] == "CONFLICT", outcome
        worker.unanswered, worker.must_succeed = [], False
        if kill_after is not None and ledger.acked_this_run >= kill_after and not killed.is_set():
            killed.set()
            await strand(client)
            assert await server.kill_9() == -9  # other workers' acks are in flight now
        return True

    async def work(worker: Worker) -> None:
        async with server.client() as client:
            if worker.unanswered and not await send_acks(client, worker):
                return  # resend first: the same lease ids, to the restarted server
            while not killed.is_set() and not all_done.is_set():
                try:
                    reply = await client.post(
                        "/api/v1/tasks/lease",
                        json={"worker_id": worker.name, "max_tasks": 10, "wait": 0.5,
                              "lease_seconds": LEASE_S},
                        headers=headers,
                    )  # fmt: skip
                except httpx.TransportError:
                    return
                assert reply.status_code == 200, reply.text
                leased = reply.json()["data"]
                if not leased:
                    if kill_after is None and await everything_completed(client, admin):
                        all_done.set()
                    continue
                worker.unanswered = [
                    {"id": t["id"], "lease_id": t["lease"]["id"], "status": "completed",
                     "result": {"by": worker.name, "run": run, "task": t["id"]}}
                    for t in leased
                ]  # fmt: skip
                if not await send_acks(client, worker):
                    return

    async with trio.open_nursery() as nursery:
        for worker in workers:
            nursery.start_soon(work, worker)
    return survivor[0] if survivor else None


def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def stay_down_past(survivor: Worker | None) -> None:
    """The server stays down until the stranded leases have run out by their own expiry (a
    wall-clock instant: there is no event to wait for while no server runs)."""
    if survivor is not None:
        await trio.sleep(max(0.0, survivor.lease_expires_at - time.time()) + 0.2)


async def everything_completed(client: httpx.AsyncClient, headers: dict[str, str]) -> bool:
    reply = await client.get("/api/v1/analytics/dashboard", headers=headers)
    assert reply.status_code == 200, reply.text
    return bool(reply.json()["data"]["completed_tasks"] == TASKS)


async def all_tasks(client: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    while True:
        reply = await client.get(
            f"/api/v1/tasks?limit=100&skip={len(tasks)}&order=asc", headers=headers
        )
        assert reply.status_code == 200, reply.text
        page = reply.json()["data"]
        if not page:
            return tasks
        tasks += page


# httpx leaves its request-body generator unclosed when the server dies mid-request; trio's
# finalizer then warns about it. That is the client's loose end, not a finding about dtq.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object ByteStream"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_kill_9_during_batch_acks(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ledger = Ledger()
    workers = [Worker(f"w{n}") for n in range(WORKERS)]
    async with spawn_server(data_dir, ENV) as server, server.client() as setup:
        admin = bearer(await login(setup))
        reply = await setup.post(
            "/api/v1/api-keys", json={"name": "workers", "role": "worker"}, headers=admin
        )
        assert reply.status_code == 201, reply.text
        headers = {"X-API-Key": reply.json()["data"]["key"]}
        for start in range(0, TASKS, 100):
            batch = [{"name": f"job-{i}", "payload": {"i": i}} for i in range(start, start + 100)]
            reply = await setup.post("/api/v1/tasks/batch", json={"tasks": batch}, headers=admin)
            assert reply.status_code == 201, reply.text
        with trio.fail_after(BOUND_S * 4):
            survivor = await run_workers(server, headers, admin, workers, ledger, 0,
                                         ACKS_PER_RUN)  # fmt: skip
    assert len(ledger.recorded) >= ACKS_PER_RUN
    survivors = 0

    for run in range(1, KILLS + 1):
        last = run == KILLS
        await stay_down_past(survivor)
        if survivor is not None:
            workers.append(survivor)  # it kept working; it reports to the restarted server
            survivors += 1
        async with spawn_server(data_dir, ENV) as server:
            with trio.fail_after(START_S + (30 if last else BOUND_S * 4)):
                survivor = await run_workers(server, headers, admin, workers, ledger, run,
                                             None if last else ACKS_PER_RUN)  # fmt: skip
            if not last:
                continue
            async with server.client() as client:
                tasks = await all_tasks(client, admin)
    assert survivors >= KILLS - 1, "the crashes found too few live leases to test the grace"

    assert not ledger.doubles, f"tasks acked twice with a 2xx: {ledger.doubles[:5]}"
    assert len(tasks) == TASKS, "a task was lost"
    by_id = {t["id"]: t for t in tasks}
    statuses = {t["status"] for t in tasks}
    assert statuses == {"completed"}, {s: sum(t["status"] == s for t in tasks) for s in statuses}
    for task_id, result in ledger.recorded.items():
        assert by_id[task_id]["result"] == result, "a 2xx-acked result was lost or replaced"
    # Each completed task carries the result of one of the acks sent for it.
    assert all(t["result"]["task"] == t["id"] for t in tasks)
