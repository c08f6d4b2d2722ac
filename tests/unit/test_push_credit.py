"""The worker's push mode keeps its credit right when the server pushes against a credit
before the credit's own reply arrives (the order a fast server produces). Counting the push
first used to leave that credit counted as outstanding for ever: the worker asked for no more,
the server pushed no more, and the worker stalled with tasks waiting."""

from __future__ import annotations

from typing import Any

import msgspec
import trio

from dtq.client.transport_push import PushTransport
from dtq.messages import TaskOut
from dtq.wire import ReplyIn

TASK = {
    "id": "0190a0b0-0000-7000-8000-00000000000{}", "name": "n", "description": None,
    "status": "running", "priority": "medium", "queue": "default", "payload": None,
    "result": None, "error": None, "retry_count": 0, "attempts": 1, "timeout": 3600.0,
    "worker_id": "w", "lease": None, "tags": [], "idempotency_key": None, "run_at": None,
    "created_at": None, "updated_at": None, "started_at": None, "completed_at": None,
    "duration": None,
}  # fmt: skip


def task(i: int) -> TaskOut:
    return msgspec.convert({**TASK, "id": str(TASK["id"]).format(i)}, TaskOut)


class FastServerLane:
    """A lane whose server pushes the credited tasks before it replies to the credit."""

    generation = 1

    def __init__(self) -> None:
        self.on_push: Any = None
        self.on_cancelled: Any = None
        self.credits: list[int] = []
        self.started: list[list[str]] = []
        self.next_id = 0

    def is_connected(self) -> bool:
        return True

    async def run_reader(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def connect(self) -> None:
        pass

    async def call(self, req: Any) -> ReplyIn:
        assert req.op == "credit"
        n = req.fields["n"]
        self.credits.append(n)
        self.on_push([task(self.next_id + i) for i in range(n)])  # pushed first...
        self.next_id += n
        return ReplyIn(id=1, status=200)  # ...then the reply

    async def send(self, req: Any) -> None:
        assert req.op == "started"
        self.started.append(req.fields["task_ids"])


class FakeClient:
    def __init__(self, lane: FastServerLane) -> None:
        self._lane = lane

    async def lane(self) -> FastServerLane:
        return self._lane

    @staticmethod
    def _lane_result(req: Any, reply: Any) -> None:
        assert isinstance(reply, ReplyIn)


async def test_credit_pushed_before_its_reply_is_not_counted_twice() -> None:
    lane = FastServerLane()
    push = PushTransport(FakeClient(lane))  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(push.run_push, lambda task_id: None)
            first = await push.lease("w", max_tasks=2, wait=1)
            second = await push.lease("w", max_tasks=2, wait=1)  # stalled here before the fix
            nursery.cancel_scope.cancel()
    assert [t.id for t in first + second] == [task(i).id for i in range(4)]
    assert lane.credits == [2, 2]
    # each batch reported before `lease` returned it (before any handler could begin)
    assert lane.started == [[t.id for t in first], [t.id for t in second]]
