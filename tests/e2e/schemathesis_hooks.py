"""Schemathesis hooks for tests/e2e/test_schemathesis.py (loaded with SCHEMATHESIS_HOOKS).

Adjustments that keep each request meaningful and the run short, applied only to values the
schema allows, so an invalid value stays invalid and a valid one stays valid:

- a lease request long-polls 30 s by default: it waits 0 s here;
- in a schema-valid request, a `run_at` beyond the 10-year window becomes "now" (absent): the
  rule is relative to now, which JSON Schema cannot say (the document says it in words);
- in a schema-valid request, a payload or result with integers beyond 64 bits is replaced:
  the 64-bit rule for values nested in free-form JSON is said in words (descriptions), not in
  the schema;
- in a schema-valid schedule, a `cron` that is not a firing 5-field expression becomes
  `* * * * *`, a `timezone` that is not an IANA zone becomes `UTC`, and the task loses
  `run_at` / `idempotency_key` (a schedule sets both): rules the document says in words;
- the run's own API key is never the one revoked.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import schemathesis

from dtq.models import RUN_AT_WINDOW_S

OWN_KEY_ID = os.environ.get("DTQ_SCHEMATHESIS_KEY_ID", "")
SOME_OTHER_KEY_ID = "0" * 16


def beyond_run_at_window(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return False  # not a date-time: schema-invalid, and refused as such
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return abs(when.timestamp() - time.time()) > RUN_AT_WINDOW_S


def beyond_64_bits(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -(2**63) <= value < 2**64
    if isinstance(value, list):
        return any(beyond_64_bits(item) for item in value)
    if isinstance(value, dict):
        return any(beyond_64_bits(item) for item in value.values())
    return False


def is_positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    return str(getattr(mode, "value", mode)) == "positive"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    operation = case.operation.definition.raw.get("operationId")
    body = case.body
    if operation == "lease_tasks" and isinstance(body, dict):
        wait = body.get("wait", 30)
        if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 60:
            body["wait"] = 0
    positive = is_positive(case)
    if operation in ("create_task", "create_tasks") and isinstance(body, dict):
        tasks = body.get("tasks") if operation == "create_tasks" else [body]
        for task in tasks if isinstance(tasks, list) else []:
            if not isinstance(task, dict):
                continue
            if beyond_run_at_window(task.get("run_at")):
                del task["run_at"]
            if positive and beyond_64_bits(task.get("payload")):
                task["payload"] = {}
    if positive and isinstance(body, dict):
        if operation == "update_task" and beyond_64_bits(body.get("payload")):
            body["payload"] = {}
        if operation == "complete_task" and beyond_64_bits(body.get("result")):
            body["result"] = None
        acks = body.get("acks") if operation == "ack_tasks" else None
        for ack in acks if isinstance(acks, list) else []:
            if isinstance(ack, dict) and beyond_64_bits(ack.get("result")):
                ack["result"] = None
    if positive and operation in ("create_schedule", "update_schedule") and isinstance(body, dict):
        schedule_made_valid(body)
    params = case.path_parameters
    if operation == "revoke_api_key" and params and params.get("key_id") == OWN_KEY_ID:
        params["key_id"] = SOME_OTHER_KEY_ID


def schedule_made_valid(body: dict[str, Any]) -> None:
    from dtq.core import cron
    from dtq.errors import InvalidRequest

    if isinstance(body.get("cron"), str):
        try:
            cron.check(body["cron"])
        except InvalidRequest:
            body["cron"] = "* * * * *"
    if isinstance(body.get("timezone"), str):
        try:
            cron.zone(body["timezone"])
        except InvalidRequest:
            body["timezone"] = "UTC"
    task = body.get("task")
    if isinstance(task, dict):
        task.pop("run_at", None)
        task.pop("idempotency_key", None)
        if beyond_64_bits(task.get("payload")):
            task["payload"] = {}
