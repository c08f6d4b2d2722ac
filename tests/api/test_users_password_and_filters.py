"""An admin resets a user's password over the API; tasks are listed by queue and name."""

from __future__ import annotations

from .conftest import ADMIN_PASSWORD
from .helpers import Client, create_task, error_of, ok, success_body


async def test_an_admin_sets_a_users_password(admin: Client, client: Client) -> None:
    ok(await admin.post("/api/v1/users", {"username": "dora", "password": "first-password"}), 201)
    user = ok(await admin.patch("/api/v1/users/dora", {"password": "second-password"}))
    assert (user["username"], user["role"]) == ("dora", "viewer")

    old = {"username": "dora", "password": "first-password"}
    error_of(await client.post("/api/v1/auth/login", old), 401, "UNAUTHORIZED")
    new = {"username": "dora", "password": "second-password"}
    assert ok(await client.post("/api/v1/auth/login", new))["token"]

    reply = await admin.patch("/api/v1/users/nobody", {"password": "second-password"})
    error_of(reply, 404, "NOT_FOUND", field="username")
    reply = await admin.patch("/api/v1/users/dora", {"password": "short"})
    error_of(reply, 400, "INVALID_REQUEST", field="password")
    reply = await admin.patch("/api/v1/users/dora", {"password": "long-enough", "colour": "red"})
    error_of(reply, 400, "INVALID_REQUEST")
    admin_login = {"username": "admin", "password": ADMIN_PASSWORD}
    assert ok(await client.post("/api/v1/auth/login", admin_login))["token"]


async def test_list_tasks_by_queue_and_name(admin: Client) -> None:
    a = await create_task(admin, "resize", queue="images")
    b = await create_task(admin, "resize", queue="videos")
    c = await create_task(admin, "encode", queue="videos")

    body = success_body(await admin.get("/api/v1/tasks?queue=videos&order=asc"))
    assert [t["id"] for t in body["data"]] == [b["id"], c["id"]]
    assert body["pagination"]["total"] == 2
    listed = ok(await admin.get("/api/v1/tasks?name=resize&order=asc"))
    assert [t["id"] for t in listed] == [a["id"], b["id"]]
    listed = ok(await admin.get("/api/v1/tasks?name=resize&queue=videos"))
    assert [t["id"] for t in listed] == [b["id"]]
    listed = ok(await admin.get("/api/v1/tasks?queue=videos&skip=1&limit=1"))
    assert [t["id"] for t in listed] == [b["id"]]  # newest first: c, then b
    error_of(await admin.get("/api/v1/tasks?queue=no%20spaces"), 400, "INVALID_REQUEST")
