"""A task's history names who acted, whichever way the call came: over the fast lane (TCP) the
actor is the connection's principal (`key:<id>` / `user:<name>`), exactly as over REST."""

from __future__ import annotations

from typing import Any

from dtq import AsyncClient
from dtq.models import AckItem

from .helpers import SERVE_ADMIN_PASSWORD as ADMIN_PASSWORD


def _actors(events: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(e["event"], e.get("actor")) for e in events]


async def test_fast_lane_history_records_the_principal(server_url: str) -> None:
    async with AsyncClient(server_url, transport="http") as admin:
        await admin.login("admin", ADMIN_PASSWORD)
        worker = await admin.create_api_key("lane-worker", "worker")
        operator = await admin.create_api_key("lane-operator", "operator")
        w_actor, op_actor = f"key:{worker['key_id']}", f"key:{operator['key_id']}"
        async with (
            AsyncClient(server_url, api_key=operator["key"], transport="tcp") as op,
            AsyncClient(server_url, api_key=worker["key"], transport="tcp") as w,
        ):
            first = await op.submit("lane", queue="lane", retry_count=1)
            [second, third, fourth] = await op.submit_many(
                [{"name": "lane", "queue": "lane"} for _ in range(3)]
            )
            by_id = {t.id: t for t in await w.lease("lw", queues=["lane"], max_tasks=4, wait=1)}
            assert op._lane is not None and w._lane is not None  # really the fast lane
            assert set(by_id) == {first.id, second.id, third.id, fourth.id}
            lease = {tid: t.lease.id for tid, t in by_id.items() if t.lease is not None}
            await w.extend(first.id, lease[first.id], 30)
            await w.fail(first.id, lease[first.id], "try again")  # a retry is scheduled
            await w.release(second.id, lease[second.id])
            await w.ack([AckItem(id=third.id, lease_id=lease[third.id], status="completed")])
            await w.complete(fourth.id, lease[fourth.id], {"ok": True})
            await op.cancel(second.id)

        async with AsyncClient(server_url, transport="tcp") as lane_admin:
            await lane_admin.login("admin", ADMIN_PASSWORD)
            by_user = await lane_admin.submit("lane-user", queue="lane-user")
            await lane_admin.cancel(by_user.id)
            assert lane_admin._lane is not None

        assert _actors(await admin.task_events(first.id)) == [
            ("created", op_actor), ("leased", w_actor), ("extended", w_actor),
            ("retry_scheduled", w_actor),
        ]  # fmt: skip
        assert _actors(await admin.task_events(second.id)) == [
            ("created", op_actor), ("leased", w_actor), ("released", w_actor),
            ("cancelled", op_actor),
        ]  # fmt: skip
        assert _actors(await admin.task_events(third.id))[-1] == ("completed", w_actor)
        assert _actors(await admin.task_events(fourth.id))[-1] == ("completed", w_actor)
        assert _actors(await admin.task_events(by_user.id)) == [
            ("created", "user:admin"), ("cancelled", "user:admin"),
        ]  # fmt: skip
