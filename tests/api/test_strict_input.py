"""Strict input (issue 8, findings 3, 9 and 10): bad bytes, media types, integers sent as
whole-number floats, NUL characters, run_at bounds, payload shape, `null` in query strings,
and the methods OPTIONS lists. Every refusal is a 400 (415 for the media type) in the guide's
error format, never a 500."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from quart_trio import QuartTrio

from dtq.net.routing import RouteSpec

from .helpers import Client, create_task, error_of, get_task, ok, success_body

TASK_ID = "123e4567-e89b-12d3-a456-426614174000"
PATH_VALUES = {
    "task_id": TASK_ID,
    "webhook_id": TASK_ID,
    "worker_id": "w1",
    "username": "bob",
    "key_id": "0123456789abcdef",
    "name": "default",  # a queue or a schedule
}

# Inside a JSON string: bytes that are not UTF-8, and escapes that are not characters.
BAD_STRING_CONTENTS = [
    b"\xff",  # never valid in UTF-8
    b"\x80",  # a continuation byte alone
    b"\xe2\x82",  # truncated sequence
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong "/", three bytes
    b"\xf0\x80\x80\xaf",  # overlong "/", four bytes
    b"\xed\xa0\x80",  # U+D800 encoded: a surrogate as raw bytes
    b"\xed\xbf\xbf",  # U+DFFF encoded
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\\ud800",  # lone high surrogate escape
    b"\\udc00",  # lone low surrogate escape
    b"\\ud800\\u0041",  # high surrogate followed by a non-surrogate
    b"ok\\udbff",  # at the end of a string
]


def body_specs(app: QuartTrio) -> list[tuple[RouteSpec, str]]:
    """Every declared operation that takes a JSON body, with its path filled in."""
    out = []
    for spec in app.extensions["dtq_api"].registry:
        if spec.body is None:
            continue
        path = spec.path
        for name in spec.path_params:
            path = path.replace("{" + name + "}", PATH_VALUES[name])
        out.append((spec, path))
    assert len(out) >= 12, out
    return out


def bodies_with(bad: bytes, spec: RouteSpec) -> list[bytes]:
    """The bad string as a key, and as the value of each of the body's fields."""
    bodies = [b'{"' + bad + b'": 1}', b'{"' + bad + b'": "x"}']
    for field in spec.body.__struct_fields__:  # type: ignore[union-attr]
        bodies.append(b'{"' + field.encode() + b'": "' + bad + b'"}')
        bodies.append(b'{"' + field.encode() + b'": ["' + bad + b'"]}')
        bodies.append(b'{"' + field.encode() + b'": {"k": "' + bad + b'"}}')
    return bodies


async def test_bad_bytes_in_strings_are_400_on_every_body_route(
    admin: Client, client: Client, app: QuartTrio
) -> None:
    for spec, path in body_specs(app):
        caller = admin if spec.auth else client
        for bad in BAD_STRING_CONTENTS:
            for raw in bodies_with(bad, spec):
                reply = await caller.request(spec.method, path, body=raw)
                assert reply.status == 400, (spec.method, path, raw, reply)
                error_of(reply, 400, "INVALID_REQUEST")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0


async def test_the_login_that_was_a_500(client: Client) -> None:
    raw = b'{"username": "\xff", "password": "password"}'
    reply = await client.post("/api/v1/auth/login", body=raw)
    error_of(reply, 400, "INVALID_REQUEST", field="body", reason="invalid UTF-8")


async def test_valid_unicode_still_works(admin: Client) -> None:
    raw = '{"name": "caf\u00e9 \U0001f600", "payload": {"k": "\\ud83d\\ude00"}}'.encode()
    task = ok(await admin.post("/api/v1/tasks", body=raw), 201)
    assert task["name"] == "caf\u00e9 \U0001f600"
    assert task["payload"] == {"k": "\U0001f600"}


# -- media type ----------------------------------------------------------------------------


async def test_bodies_must_be_json_by_content_type(
    admin: Client, client: Client, app: QuartTrio
) -> None:
    for spec, path in body_specs(app):
        caller = admin if spec.auth else client
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "", None):
            headers = {"Content-Type": content_type} if content_type is not None else {}
            reply = await caller.request(
                spec.method, path, body=b"{}", headers=headers, content_type=None
            )
            error_of(reply, 415, "INVALID_REQUEST", field="Content-Type")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0


async def test_json_media_types_are_accepted(admin: Client) -> None:
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.dtq+json",
    ):
        reply = await admin.post(
            "/api/v1/tasks", body=b'{"name": "x"}', headers={"Content-Type": content_type}
        )
        ok(reply, 201)


async def test_no_body_is_still_400_not_415(admin: Client) -> None:
    reply = await admin.post("/api/v1/tasks", content_type=None)
    error_of(reply, 400, "INVALID_REQUEST", field="body")


# -- numbers -------------------------------------------------------------------------------


async def test_whole_number_floats_are_integers(admin: Client) -> None:
    raw = b'{"name": "f", "retry_count": 3.0, "payload": {"keep": 1.0, "n": 2}}'
    task = ok(await admin.post("/api/v1/tasks", body=raw), 201)
    assert task["retry_count"] == 3
    reply = await admin.get(f"/api/v1/tasks/{task['id']}")
    assert b'"keep":1.0' in reply.body  # a payload's floats stay floats
    batch = {"tasks": [{"name": "a"}, {"name": "b", "retry_count": 2.0}]}
    created = ok(await admin.post("/api/v1/tasks/batch", batch), 201)
    assert created[1]["retry_count"] == 2
    beat = {"worker_id": "w1", "current_load": 5.0, "max_capacity": 1e1}
    worker = ok(await admin.post("/api/v1/workers/heartbeat", beat))
    assert (worker["current_load"], worker["max_capacity"]) == (5, 10)
    lease = {"worker_id": "w1", "wait": 0, "max_tasks": 2.0}
    assert len(ok(await admin.post("/api/v1/tasks/lease", lease))) == 2
    assert ok(await admin.get("/api/v1/tasks?limit=2.0&skip=0.0")) != []


async def test_fractional_and_out_of_range_numbers_for_integers_are_400(admin: Client) -> None:
    for body, field in [
        ({"name": "x", "retry_count": 1.5}, "retry_count"),
        ({"name": "x", "retry_count": 1e3}, "retry_count"),
        ({"name": "x", "retry_count": 1e300}, "retry_count"),
        ({"name": "x", "retry_count": 2.0, "timeout": "1"}, "timeout"),
        ({"tasks": [{"name": "a", "retry_count": 2.0}, {"name": "b", "retry_count": 0.5}]},
         "tasks[1].retry_count"),
    ]:  # fmt: skip
        path = "/api/v1/tasks/batch" if "tasks" in body else "/api/v1/tasks"
        reply = await admin.post(path, body)
        error_of(reply, 400, "INVALID_REQUEST", field=field)
    raw = b'{"name": "x", "retry_count": 2.0, "description": "\xff"}'  # bad after the float
    error_of(await admin.post("/api/v1/tasks", body=raw), 400, "INVALID_REQUEST", field="body")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0


# -- text fields, run_at, payload ----------------------------------------------------------


async def test_nul_characters_are_refused_in_names(admin: Client) -> None:
    for body, field in [
        ({"name": "a\x00b"}, "name"),
        ({"name": "a", "description": "d\x00"}, "description"),
        ({"name": "a", "tags": ["ok", "t\x00"]}, "tags[1]"),
        ({"name": "a", "queue": "q\x00"}, "queue"),
        ({"name": "a", "idempotency_key": "\x00"}, "idempotency_key"),
    ]:
        error_of(await admin.post("/api/v1/tasks", body), 400, "INVALID_REQUEST", field=field)
    task = await create_task(admin, payload={"bytes": "a\x00b"})  # data stays as sent
    assert task["payload"] == {"bytes": "a\x00b"}
    reply = await admin.put(f"/api/v1/tasks/{task['id']}", {"description": "\x00"})
    error_of(reply, 400, "INVALID_REQUEST", field="description")


async def test_run_at_within_ten_years(admin: Client) -> None:
    year = datetime.now(UTC).year
    for run_at in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", f"{year + 11}-01-01T00:00:00",
                   f"{year - 11}-06-01T00:00:00Z", "", "tomorrow"):  # fmt: skip
        reply = await admin.post("/api/v1/tasks", {"name": "x", "run_at": run_at})
        error_of(reply, 400, "INVALID_REQUEST", field="run_at")
    batch = {"tasks": [{"name": "a"}, {"name": "b", "run_at": "9999-01-01T00:00:00Z"}]}
    reply = await admin.post("/api/v1/tasks/batch", batch)
    error_of(reply, 400, "INVALID_REQUEST", field="tasks[1].run_at")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0
    past = await create_task(admin, run_at=f"{year - 9}-01-01T00:00:00Z")
    assert past["run_at"] is None  # due already: runs now
    later = await create_task(admin, run_at=f"{year + 9}-01-01T00:00:00Z")
    assert later["run_at"].startswith(str(year + 9))


async def test_payload_must_be_an_object(admin: Client) -> None:
    for payload in ("x", [1, 2], None, 3, True):
        reply = await admin.post("/api/v1/tasks", {"name": "x", "payload": payload})
        error_of(reply, 400, "INVALID_REQUEST", field="payload")
        batch = {"tasks": [{"name": "ok"}, {"name": "x", "payload": payload}]}
        reply = await admin.post("/api/v1/tasks/batch", batch)
        error_of(reply, 400, "INVALID_REQUEST", field="tasks[1].payload")
    assert success_body(await admin.get("/api/v1/tasks"))["pagination"]["total"] == 0
    task = await create_task(admin)
    assert task["payload"] == {}  # the default is an object too


async def test_duplicate_keys_last_one_wins(admin: Client) -> None:
    """Documented choice: msgspec cannot see duplicates without a second parse of every body,
    so the last occurrence wins, as in most JSON parsers (RFC 8259 leaves it open)."""
    task = ok(await admin.post("/api/v1/tasks", body=b'{"name": "a", "name": "b"}'), 201)
    assert task["name"] == "b"


# -- query strings ---------------------------------------------------------------------------


async def test_null_in_a_query_is_refused(admin: Client) -> None:
    for path, field in [
        ("/api/v1/tasks?status=null", "status"),
        ("/api/v1/tasks?priority=null", "priority"),
        ("/api/v1/workers?status=null", "status"),
        ("/api/v1/analytics/trends?metric=null", "metric"),
        ("/api/v1/analytics/export?format=null", "format"),
        (f"/api/v1/webhooks/{TASK_ID}/deliveries?status=null", "status"),
    ]:
        error_of(await admin.get(path), 400, "INVALID_REQUEST", field=field)
    ok(await admin.get("/api/v1/tasks?worker_id=null"))  # a worker may be called "null"


# -- methods -----------------------------------------------------------------------------------


def allowed(reply: Any) -> set[str]:
    return {m.strip() for m in reply.headers.get("Allow", "").split(",")} - {"OPTIONS", "HEAD", ""}


async def test_options_lists_the_methods_of_that_path_only(admin: Client) -> None:
    for path, methods in [
        ("/api/v1/tasks/ack", {"POST"}),
        ("/api/v1/tasks/batch", {"POST"}),
        ("/api/v1/tasks/lease", {"POST"}),
        ("/api/v1/workers/heartbeat", {"POST"}),
        ("/api/v1/workers/status", {"GET"}),
        ("/api/v1/tasks", {"GET", "POST"}),
        (f"/api/v1/tasks/{TASK_ID}", {"GET", "PUT", "DELETE"}),
        (f"/api/v1/tasks/{TASK_ID}/complete", {"POST"}),
        ("/api/v1/workers/w1", {"GET"}),
    ]:
        reply = await admin.request("OPTIONS", path)
        assert reply.status in (200, 204), (path, reply)
        assert allowed(reply) == methods, (path, reply.headers)
    reply = await admin.get("/api/v1/tasks/lease")  # not "get the task called lease"
    error_of(reply, 405, "INVALID_REQUEST")
    assert allowed(reply) == {"POST"}


async def test_update_refuses_other_statuses_as_documented(admin: Client) -> None:
    task = await create_task(admin)
    for status in ("pending", "running", "completed", "failed", "null"):
        reply = await admin.put(f"/api/v1/tasks/{task['id']}", {"status": status})
        error_of(reply, 400, "INVALID_REQUEST", field="status")
    assert (await get_task(admin, task["id"]))["status"] == "pending"
    cancelled = ok(await admin.put(f"/api/v1/tasks/{task['id']}", {"status": "cancelled"}))
    assert cancelled["status"] == "cancelled"
