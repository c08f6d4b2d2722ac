"""A client given several servers (`DTQ_URL=http://a:5000,http://b:5000`) moves to the next
when one is down, and resends only what is safe to resend. Over real sockets, with a real
server killed mid-drain: `tests/e2e/test_multi_server.py`."""

from __future__ import annotations

import httpx
import pytest

from dtq.client import Client
from dtq.client.endpoints import Endpoints, parse_urls
from dtq.errors import Unavailable

TASK_ID = "0190a0b0-0000-7000-8000-000000000001"
TASK = {
    "id": TASK_ID, "name": "n", "description": None, "status": "completed", "priority": "medium",
    "queue": "default", "payload": None, "result": None, "error": None, "retry_count": 0,
    "attempts": 1, "timeout": 3600.0, "worker_id": None, "lease": None, "tags": [],
    "idempotency_key": None, "run_at": None, "created_at": None, "updated_at": None,
    "started_at": None, "completed_at": None, "duration": None,
}  # fmt: skip

OK = {"data": TASK}
DOWN = {"error": {"code": "SERVICE_UNAVAILABLE", "message": "database unreachable"}}


def client_over(down: set[str], seen: list[str], *, urls: str = "http://a:1,http://b:2") -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        seen.append(f"{request.method} {host}")
        if host in down:
            raise httpx.ConnectError("connection refused", request=request)
        if host == "c":
            return httpx.Response(503, json=DOWN, headers={"Retry-After": "1"})
        return httpx.Response(201 if request.method == "POST" else 200, json=OK)

    client = Client(urls, api_key="k", max_retries=0, transport="http")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    return client


def test_parse_urls() -> None:
    assert parse_urls(" http://a:1/, http://b:2 ,http://a:1") == ["http://a:1", "http://b:2"]
    assert parse_urls(["http://a:1"]) == ["http://a:1"]
    with pytest.raises(ValueError):
        parse_urls(" , ")


def test_endpoints_move_once_per_failure_of_the_current_server() -> None:
    e = Endpoints("http://a:1,http://b:2")
    assert e.failed("http://a:1") == "http://b:2"
    assert e.failed("http://a:1") == "http://b:2"  # a second request that saw a fail: no flip
    assert e.failed("http://b:2") == "http://a:1"
    assert e.switches == 2
    assert Endpoints("http://a:1").failed("http://a:1") == "http://a:1"


def test_a_refused_connection_moves_to_the_next_server_even_for_a_create() -> None:
    seen: list[str] = []
    client = client_over({"a"}, seen)
    task = client.submit("n")  # no idempotency key: resent only because it never arrived
    assert task.id == TASK_ID
    assert seen == ["POST a", "POST b"]
    client.get(TASK_ID)  # and it stays there
    assert seen[-1] == "GET b"


def test_a_503_moves_to_the_next_server() -> None:
    seen: list[str] = []
    client = client_over(set(), seen, urls="http://c:3,http://b:2")
    client.complete(TASK_ID, "lease", {"ok": 1})  # fenced by the lease: safe to resend
    assert seen == ["POST c", "POST b"]


def test_a_create_whose_answer_was_lost_is_not_resent_elsewhere() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        raise httpx.ReadError("connection reset", request=request)  # it may have landed

    client = Client("http://a:1,http://b:2", api_key="k", max_retries=0, transport="http")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    with pytest.raises(httpx.ReadError):
        client.submit("n")
    assert seen == ["a"]
    assert client.url == "http://b:2"  # the next request goes to the other server


def test_every_server_down_raises_after_the_retries() -> None:
    seen: list[str] = []
    client = client_over({"a", "b"}, seen)
    with pytest.raises(httpx.ConnectError):
        client.get(TASK_ID)
    assert seen == ["GET a", "GET b"]


def test_one_server_keeps_the_old_behaviour() -> None:
    seen: list[str] = []
    client = client_over(set(), seen, urls="http://c:3")
    with pytest.raises(Unavailable):
        client.complete(TASK_ID, "lease")
    assert seen == ["POST c"]
