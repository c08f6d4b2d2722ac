"""Queue events to webhooks over real sockets: pausing, updating and resuming a queue each
deliver one signed `queue.*` event carrying the queue, listed with the webhook's deliveries;
task subscriptions do not get them, `*` does; an unknown name is still refused."""

from __future__ import annotations

from typing import Any

from dtq.core.webhooks.outbox import verify

from .webhook_support import Received, Server, run_receiver

P = "/api/v1/webhooks"
Q = "/api/v1/queues/emails"
SECRET = "a-long-enough-secret"
QUEUE_EVENTS = ["queue.paused", "queue.resumed", "queue.updated"]


async def _register(server: Server, url: str, events: list[str]) -> str:
    hook = await server.admin.ok(
        "POST", P, {"url": url, "events": events, "secret": SECRET}, status=201
    )
    assert hook["events"] == events
    return str(hook["id"])


def _queue_events(requests: list[Received]) -> list[Received]:
    return [r for r in requests if r.headers["x-dtq-event"].startswith("queue.")]


async def test_pause_update_resume_each_deliver_one_signed_queue_event(server: Server) -> None:
    async with run_receiver() as receiver, run_receiver() as task_receiver:
        hook_id = await _register(server, receiver.url, QUEUE_EVENTS)
        tasks_only = await _register(server, task_receiver.url, ["task.created"])
        # the queue exists once a task names it
        await server.admin.ok("POST", "/api/v1/tasks", {"name": "send", "queue": "emails"},
                              status=201)  # fmt: skip
        await task_receiver.wait_count(1)

        await server.admin.ok("POST", f"{Q}/pause")
        await receiver.wait_count(1)
        await server.admin.ok("PUT", Q, {"concurrency_limit": 3, "rate_limit_per_second": 2.5})
        await receiver.wait_count(2)
        await server.admin.ok("POST", f"{Q}/resume")
        await receiver.wait_count(3)

        paused, updated, resumed = receiver.requests
        bodies: list[dict[str, Any]] = []
        in_order = ["queue.paused", "queue.updated", "queue.resumed"]
        for request, kind in zip((paused, updated, resumed), in_order, strict=True):
            assert request.method == "POST" and request.target == "/hook"
            assert verify(SECRET, request.body, request.headers["x-dtq-signature"])
            assert request.headers["x-dtq-attempt"] == "1"
            body = request.json
            assert body["event"] == request.headers["x-dtq-event"] == kind
            assert body["delivery_id"] == request.headers["x-dtq-delivery"]
            assert set(body) == {"event", "queue", "timestamp", "delivery_id"}  # no task
            assert body["timestamp"].endswith("Z")
            assert body["queue"]["updated_at"] == body["timestamp"]
            bodies.append(body["queue"])
        limits = ("concurrency_limit", "concurrency_limit_per_key", "rate_limit_per_second")
        assert [(q["name"], q["paused"], *(q[k] for k in limits)) for q in bodies] == [
            ("emails", True, None, None, None),
            ("emails", True, 3, None, 2.5),
            ("emails", False, 3, None, 2.5),
        ]

        rows = await server.wait_settled(hook_id, 3)
        assert [
            (r["event"], r["queue"], r["task_id"], r["status"], r["attempts"]) for r in rows
        ] == [
            ("queue.resumed", "emails", None, "delivered", 1),
            ("queue.updated", "emails", None, "delivered", 1),
            ("queue.paused", "emails", None, "delivered", 1),
        ]  # fmt: skip  (newest first)
        assert [r["id"] for r in rows] == [r.headers["x-dtq-delivery"] for r in (
            resumed, updated, paused)]  # fmt: skip
        # the task-only webhook got its task event and nothing of the queue's
        [task_row] = await server.wait_settled(tasks_only, 1)
        assert task_row["event"] == "task.created" and task_row["queue"] is None
        assert _queue_events(task_receiver.requests) == []
        assert len(receiver.requests) == 3


async def test_a_queue_event_failing_is_retried_like_a_task_event(server: Server) -> None:
    async def first_fails(request: Received) -> int:
        return 503 if request.headers["x-dtq-attempt"] == "1" else 200

    async with run_receiver(first_fails) as receiver:
        hook_id = await _register(server, receiver.url, ["*"])
        await server.admin.ok("PUT", "/api/v1/queues/reports", {"paused": True})
        await receiver.wait_for(lambda seen: len(_queue_events(seen)) >= 2)
        first, second = _queue_events(receiver.requests)
        assert first.body == second.body  # the same delivery, byte for byte
        assert first.headers["x-dtq-delivery"] == second.headers["x-dtq-delivery"]
        assert [first.headers["x-dtq-attempt"], second.headers["x-dtq-attempt"]] == ["1", "2"]
        assert first.json["event"] == "queue.paused" and first.json["queue"]["name"] == "reports"
        [row] = await server.wait_settled(hook_id, 1)
        assert (row["event"], row["status"], row["attempts"]) == ("queue.paused", "delivered", 2)
        assert [h["status_code"] for h in row["history"]] == [503, 200]


async def test_unknown_queue_event_names_are_refused(server: Server) -> None:
    for bad in ("queue.exploded", "queue.*", "worker.active"):
        status, reply = await server.admin.call(
            "POST", P, {"url": "https://example.com/h", "events": ["queue.paused", bad]}
        )
        assert status == 400, reply
        assert reply["status"] == "error"
        error = reply["error"]
        assert error["code"] == "INVALID_REQUEST" and error["details"]["field"] == "events[1]"
    assert await server.admin.ok("GET", P) == []
