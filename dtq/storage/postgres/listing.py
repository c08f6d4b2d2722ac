"""`Store.list_tasks` on PostgreSQL: the filters as one WHERE, each sort a total order on the
row's columns (µs, seq, id), so `desc` is exactly `asc` reversed, as on every backend."""

from __future__ import annotations

from typing import Any

from dtq.errors import InvalidRequest
from dtq.models import Priority, epoch
from dtq.storage.base import TaskQuery
from dtq.storage.postgres.rows import key, us

_ORDERS = {
    "created_at": ("created_us {d}", "seq {d}", "id {d}"),
    "updated_at": ("updated_us {d}", "seq {d}", "id {d}"),
    # no duration first (asc), then whole µs, ties in created order
    "duration": ("dur_us {d} NULLS {n}", "created_us {d}", "seq {d}", "id {d}"),
}


def task_query(q: TaskQuery) -> tuple[str, list[Any], str, list[Any]]:
    """(page SQL, its params, count SQL, its params) for a listing."""
    if q.sort not in _ORDERS:
        raise InvalidRequest(f"cannot sort by {q.sort!r}", field="sort")
    where: list[str] = []
    params: list[Any] = []
    if q.status is not None:
        where.append("status = %s")
        params.append(str(q.status))
    if q.priority is not None:
        where.append("priority_rank = %s")
        params.append(Priority(q.priority).rank)
    if q.worker_id is not None:
        where.append("worker_id = %s")
        params.append(key(q.worker_id))
    if q.queue is not None:
        where.append("queue = %s")
        params.append(q.queue)
    if q.name is not None:
        where.append("name = %s")
        params.append(key(q.name))
    if q.tag is not None:
        where.append("tags @> ARRAY[%s::bytea]")
        params.append(key(q.tag))
    if (after := epoch(q.created_after)) is not None:
        where.append("created_us >= %s")
        params.append(us(after))
    if (before := epoch(q.created_before)) is not None:
        where.append("created_us < %s")
        params.append(us(before))
    cond = f" WHERE {' AND '.join(where)}" if where else ""
    desc = q.order == "desc"
    order = ", ".join(
        part.format(d="DESC" if desc else "ASC", n="LAST" if desc else "FIRST")
        for part in _ORDERS[q.sort]
    )
    page = f"SELECT data FROM dtq_tasks{cond} ORDER BY {order} LIMIT %s OFFSET %s"
    count = f"SELECT count(*) FROM dtq_tasks{cond}"
    return page, [*params, q.limit, q.skip], count, params
