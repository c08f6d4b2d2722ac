"""Deliveries over real sockets to a receiver on 127.0.0.1: signature, headers, retries after
errors and timeouts, giving up after the limit, what the API shows, restart.

The server runs in process (API calls through Quart's test client); every delivery is a real
HTTP request from the server's delivery loop to the receiver.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import trio

from dtq.core.webhooks.outbox import verify

from .webhook_support import Received, Server, in_process, reserved_port, run_receiver

P = "/api/v1/webhooks"
SECRET = "a-long-enough-secret"


async def _register(server: Server, url: str, events: list[str], **extra: object) -> str:
    hook = await server.admin.ok(
        "POST", P, {"url": url, "events": events, "secret": SECRET, **extra}, status=201
    )
    return str(hook["id"])


async def _create_task(server: Server, **body: object) -> str:
    task = await server.admin.ok("POST", "/api/v1/tasks", {"name": "job", **body}, status=201)
    return str(task["id"])


def _check_signed(request: Received) -> None:
    assert request.method == "POST" and request.target == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert verify(SECRET, request.body, request.headers["x-dtq-signature"])


async def test_delivery_is_signed_and_labelled(server: Server) -> None:
    async with run_receiver() as receiver:
        hook_id = await _register(server, receiver.url, ["task.created"])
        task_id = await _create_task(server, payload={"n": 1})
        await receiver.wait_count(1)
        [request] = receiver.requests
        _check_signed(request)
        assert request.headers["x-dtq-signature"].startswith("sha256=")
        body = request.json
        assert set(body) == {"event", "task", "timestamp", "delivery_id"}
        assert body["event"] == request.headers["x-dtq-event"] == "task.created"
        assert body["delivery_id"] == request.headers["x-dtq-delivery"]
        assert body["task"]["id"] == task_id and body["task"]["payload"] == {"n": 1}
        assert body["task"]["status"] == "pending" and body["timestamp"].endswith("Z")
        assert request.headers["x-dtq-attempt"] == "1"

        [row] = await server.wait_settled(hook_id, 1)
        assert row["id"] == body["delivery_id"] and row["task_id"] == task_id
        assert row["status"] == "delivered" and row["attempts"] == 1
        assert row["last_status_code"] == 200 and row["last_error"] is None
        assert row["next_attempt_at"] is None and row["completed_at"].endswith("Z")
        assert row["history"][0]["status_code"] == 200


async def test_retried_after_a_500_then_delivered(server: Server) -> None:
    async def first_fails(request: Received) -> int:
        return 500 if request.headers["x-dtq-attempt"] == "1" else 204

    async with run_receiver(first_fails) as receiver:
        hook_id = await _register(server, receiver.url, ["task.created"])
        await _create_task(server)
        await receiver.wait_count(2)
        first, second = receiver.requests
        for request in (first, second):
            _check_signed(request)
        # the same delivery, byte for byte
        assert first.body == second.body
        assert first.headers["x-dtq-delivery"] == second.headers["x-dtq-delivery"]
        assert [first.headers["x-dtq-attempt"], second.headers["x-dtq-attempt"]] == ["1", "2"]

        [row] = await server.wait_settled(hook_id, 1)
        assert row["status"] == "delivered" and row["attempts"] == 2
        assert [a["status_code"] for a in row["history"]] == [500, 204]
        assert row["history"][0]["error"].startswith("HTTP 500")
        assert row["history"][1]["error"] is None
        # the second attempt waited for the backoff (base 0.05 s, jitter +-25 %)
        gap = _seconds(row["history"][1]["started_at"]) - _seconds(row["history"][0]["finished_at"])
        assert gap >= 0.03


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_marked_failed_after_the_limit(server: Server) -> None:
    async def always_503(request: Received) -> int:
        return 503

    async with run_receiver(always_503) as receiver:
        hook_id = await _register(server, receiver.url, ["task.created"])
        await _create_task(server)
        [row] = await server.wait_settled(hook_id, 1)
        assert row["status"] == "failed" and row["attempts"] == 3  # webhook_max_attempts
        assert [a["status_code"] for a in row["history"]] == [503, 503, 503]
        assert row["next_attempt_at"] is None
        assert len(receiver.requests) == 3
        assert len({r.headers["x-dtq-delivery"] for r in receiver.requests}) == 1
        # nothing is owed any more
        assert await server.services.queue.store.due_deliveries(10) == []
        failed = await server.admin.ok("GET", f"{P}/{hook_id}/deliveries?status=failed")
        assert [r["id"] for r in failed] == [row["id"]]
        assert await server.admin.ok("GET", f"{P}/{hook_id}/deliveries?status=pending") == []


async def test_timeouts_and_refused_connections_are_retried_and_recorded(tmp_path: Path) -> None:
    async def never_answers(request: Received) -> int:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    refused = await reserved_port()
    refused_url = f"http://127.0.0.1:{refused.getsockname()[1]}/hook"
    with refused:
        async with (
            in_process(tmp_path / "data", webhook_timeout_s=0.3, webhook_max_attempts=2) as server,
            run_receiver(never_answers) as silent,
        ):
            slow_hook = await _register(server, silent.url, ["task.created"])
            refused_hook = await _register(server, refused_url, ["task.created"])
            await _create_task(server)
            [slow] = await server.wait_settled(slow_hook, 1)
            [down] = await server.wait_settled(refused_hook, 1)
            assert len(silent.requests) == 2
    assert slow["status"] == "failed" and slow["attempts"] == 2
    assert [a["error"] for a in slow["history"]] == ["timed out after 0.3 s"] * 2
    assert all(a["status_code"] is None for a in slow["history"])
    assert down["status"] == "failed" and down["attempts"] == 2
    assert all(a["error"].startswith("ConnectError") for a in down["history"]), down


async def test_each_webhook_gets_the_events_it_asked_for(server: Server) -> None:
    async with run_receiver() as receiver:
        everything = await _register(server, receiver.url, ["*"])
        finished = await _register(
            server, receiver.url, ["task.completed", "task.failed", "task.cancelled"]
        )
        admin = server.admin
        # created, leased, retried (failed with a retry left), leased, released, leased, completed
        task_id = await _create_task(server, retry_count=1, retry_backoff_s=0.01)

        async def lease() -> str:
            [task] = await admin.ok("POST", "/api/v1/tasks/lease", {"worker_id": "w1", "wait": 5})
            assert task["id"] == task_id
            return str(task["lease"]["id"])

        lease_id = await lease()
        await admin.ok("POST", f"/api/v1/tasks/{task_id}/fail", {"lease_id": lease_id})
        lease_id = await lease()
        await admin.ok("POST", f"/api/v1/tasks/{task_id}/release", {"lease_id": lease_id})
        lease_id = await lease()
        await admin.ok("POST", f"/api/v1/tasks/{task_id}/extend", {"lease_id": lease_id})
        await admin.ok("POST", f"/api/v1/tasks/{task_id}/complete", {"lease_id": lease_id})
        # another: updated, cancelled, deleted
        other = await _create_task(server)
        await admin.ok("PUT", f"/api/v1/tasks/{other}", {"description": "edited"})
        await admin.ok("PUT", f"/api/v1/tasks/{other}", {"status": "cancelled"})
        await admin.ok("DELETE", f"/api/v1/tasks/{other}", status=204)

        # The outbox wrote each delivery with its change, so the API shows them all already.
        rows = await admin.ok("GET", f"{P}/{everything}/deliveries?limit=100")
        expected = Counter({"task.created": 2, "task.leased": 3, "task.retried": 1,
                            "task.released": 1, "task.completed": 1, "task.updated": 1,
                            "task.cancelled": 1, "task.deleted": 1})  # fmt: skip
        assert Counter(r["event"] for r in rows) == expected
        finished_rows = await admin.ok("GET", f"{P}/{finished}/deliveries")
        assert sorted(r["event"] for r in finished_rows) == ["task.cancelled", "task.completed"]

        total = expected.total() + 2
        await receiver.wait_count(total)
        by_event = Counter(r.headers["x-dtq-event"] for r in receiver.requests)
        assert by_event == expected + Counter({"task.completed": 1, "task.cancelled": 1})
        for request in receiver.requests:
            _check_signed(request)
            body = request.json
            assert body["event"] == request.headers["x-dtq-event"]
            status = {"task.created": "pending", "task.leased": "running",
                      "task.retried": "pending", "task.released": "pending",
                      "task.completed": "completed", "task.updated": "pending",
                      "task.cancelled": "cancelled", "task.deleted": "cancelled"}  # fmt: skip
            assert body["task"]["status"] == status[body["event"]]
        await server.wait_settled(everything, expected.total())


async def test_deleting_a_webhook_stops_its_deliveries(server: Server) -> None:
    async def failing(request: Received) -> int:
        return 500

    async with run_receiver(failing) as receiver:
        hook_id = await _register(server, receiver.url, ["task.created"])
        kept = await _register(server, receiver.url, ["task.deleted"])
        task_id = await _create_task(server)
        await receiver.wait_count(1)
        await server.admin.ok("DELETE", f"{P}/{hook_id}", status=204)
        store = server.services.queue.store
        assert await store.list_deliveries(hook_id) == ([], 0)
        assert await store.due_deliveries(10) == []
        await server.admin.ok("DELETE", f"/api/v1/tasks/{task_id}", status=204)
        rows = await server.admin.ok("GET", f"{P}/{kept}/deliveries")
        assert [r["event"] for r in rows] == ["task.deleted"]
        assert [r["task_id"] for r in rows] == [task_id]


async def test_owed_deliveries_resume_after_a_restart(tmp_path: Path) -> None:
    with await reserved_port() as sock:  # the receiver is down: connections are refused
        await _owed_then_resumed(tmp_path, sock)


async def _owed_then_resumed(tmp_path: Path, sock: trio.socket.SocketType) -> None:
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    slow_retries = {"webhook_backoff_base_s": 0.05, "webhook_max_attempts": 1000}
    async with in_process(tmp_path / "data", **slow_retries) as server:
        hook_id = await _register(server, url, ["task.created"])
        created = {await _create_task(server) for _ in range(3)}
        rows = await server.admin.ok("GET", f"{P}/{hook_id}/deliveries")
        assert {r["task_id"] for r in rows} == created
    async with (
        run_receiver(sock=sock) as receiver,
        in_process(tmp_path / "data", **slow_retries) as server,
    ):
        await receiver.wait_for(lambda seen: {r.json["task"]["id"] for r in seen} >= created)
        for request in receiver.requests:
            _check_signed(request)
        rows = await server.wait_settled(hook_id, 3)
        assert {r["status"] for r in rows} == {"delivered"}
    assert json.loads(receiver.requests[0].body)["event"] == "task.created"


async def test_finished_deliveries_are_pruned_owed_ones_kept(tmp_path: Path) -> None:
    with await reserved_port() as refused:
        down_url = f"http://127.0.0.1:{refused.getsockname()[1]}/hook"
        async with (
            in_process(tmp_path / "data", webhook_max_attempts=1000) as server,
            run_receiver() as receiver,
        ):
            up = await _register(server, receiver.url, ["task.created"])
            down = await _register(server, down_url, ["task.created"])
            for _ in range(2):
                await _create_task(server)
            await server.wait_settled(up, 2)
            webhooks = server.services.webhooks
            assert webhooks is not None
            assert await webhooks.prune(before=0.0) == 0  # nothing is that old
            assert await webhooks.prune(before=server.services.queue.clock.now() + 1) == 2
            assert await server.admin.ok("GET", f"{P}/{up}/deliveries") == []
            owed = await server.admin.ok("GET", f"{P}/{down}/deliveries")
            assert [r["status"] for r in owed] == ["pending", "pending"]


async def test_a_hanging_receiver_does_not_hold_up_the_queue(tmp_path: Path) -> None:
    async def never_answers(request: Received) -> int:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    settings = {"webhook_timeout_s": 30.0, "webhook_concurrency": 2}
    async with (
        in_process(tmp_path / "data", **settings) as server,
        run_receiver(never_answers) as silent,
    ):
        hook_id = await _register(server, silent.url, ["*"])
        admin = server.admin
        with trio.fail_after(10):  # far less than one delivery's timeout
            ids = [await _create_task(server) for _ in range(20)]
            leased = await admin.ok(
                "POST", "/api/v1/tasks/lease", {"worker_id": "w", "max_tasks": 20, "wait": 0}
            )
            assert sorted(t["id"] for t in leased) == sorted(ids)
            for task in leased:
                await admin.ok(
                    "POST",
                    f"/api/v1/tasks/{task['id']}/complete",
                    {"lease_id": task["lease"]["id"]},
                )
        await silent.wait_count(2)
        assert len(silent.requests) == 2  # webhook_concurrency: two attempts in flight at most
        rows = await admin.ok("GET", f"{P}/{hook_id}/deliveries?limit=100")
        assert len(rows) == 60 and {r["status"] for r in rows} == {"pending"}
