"""A refused request never takes the next one on its keep-alive connection with it (issue 8,
finding 5).

The worst case is made deterministic: the client sends a request's head, lets the server reach
its resting point (`wait_all_tasks_blocked`: the server is in process), and only then sends the
body. A refusal (401, 403, 404, 405, 429) is decided from the head alone, so it is ready before
a single body byte arrived: the server must still read the body (and answer on a connection
that stays usable), or say `Connection: close` and close. Then the next request goes out on the
same connection. Before the fix, hypercorn answered, saw the request body unfinished and closed
the connection without saying so: the next request got no response.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from .conftest import BOUND_S, InProcessServer, bearer, login, running_server

REFUSED_PER_CONNECTION = 500
BODY = json.dumps({"name": "refused", "payload": {"pad": "x" * 5000}}).encode()  # ~5 kB


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class OneConnection:
    """One HTTP/1.1 keep-alive connection on a raw socket; h11 frames, so a close is visible."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    async def post_body_late(self, target: str, headers: list[tuple[str, str]]) -> Answer:
        """POST `BODY`, the head first and the body only once the server has gone quiet."""
        head = [("Host", "dtq"), ("Content-Type", "application/json"), *headers,
                ("Content-Length", str(len(BODY)))]  # fmt: skip
        try:
            await self.stream.send_all(
                self.h11.send(h11.Request(method="POST", target=target, headers=head))
            )
            await trio.testing.wait_all_tasks_blocked()  # an early answer is decided by now
            await self.stream.send_all(self.h11.send(h11.Data(data=BODY)))
            await self.stream.send_all(self.h11.send(h11.EndOfMessage()))
        except trio.BrokenResourceError as exc:
            raise AssertionError("the server closed a connection it had kept alive") from exc
        return await self._read_answer()

    async def post_oversized(self, target: str, key: str, size: int, *, chunked: bool) -> Answer:
        framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
        head = [("Host", "dtq"), ("Content-Type", "application/json"), ("X-API-Key", key),
                framing]  # fmt: skip
        await self.stream.send_all(
            self.h11.send(h11.Request(method="POST", target=target, headers=head))
        )
        try:
            # The server may stop reading (and close) before all of it is sent: that is fine,
            # as long as its answer arrives.
            await self.stream.send_all(self.h11.send(h11.Data(data=b"x" * size)))
            await self.stream.send_all(self.h11.send(h11.EndOfMessage()))
        except trio.BrokenResourceError:
            pass
        return await self._read_answer()

    async def _read_answer(self) -> Answer:
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:  # reset: nothing more will come
                    data = b""
                self.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return Answer(response.status_code, dict(response.headers), body)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("the server closed the connection without an answer")

    def reuse(self) -> None:
        """Ready for the next request; fails if the server said it would close."""
        assert self.h11.our_state is h11.DONE, self.h11.our_state
        assert self.h11.their_state is h11.DONE, self.h11.their_state
        self.h11.start_next_cycle()

    @property
    def server_closes(self) -> bool:
        return self.h11.their_state is h11.MUST_CLOSE or self.h11.our_state is h11.MUST_CLOSE


@asynccontextmanager
async def one_connection(port: int) -> AsyncIterator[OneConnection]:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        yield OneConnection(stream)


async def make_key(server: InProcessServer, role: str, **limits: int) -> str:
    async with server.client() as client:
        token = await login(client)
        response = await client.post(
            "/api/v1/api-keys", json={"name": f"{role}-key", "role": role, **limits},
            headers=bearer(token),
        )  # fmt: skip
        assert response.status_code == 201, response.text
        key: str = response.json()["data"]["key"]
        return key


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[InProcessServer]:
    async with running_server(tmp_path / "data", max_body_bytes=64 * 1024) as running:
        yield running


async def test_500_refused_requests_with_bodies_on_one_connection(server: InProcessServer) -> None:
    viewer = await make_key(server, "viewer")
    limited = await make_key(server, "operator", rate_limit_per_minute=1, rate_limit_per_hour=1)
    refusals = [
        ("/api/v1/tasks", [], 401),  # no credentials
        ("/api/v1/tasks", [("X-API-Key", "dtq_not_a_key")], 401),
        ("/api/v1/tasks", [("X-API-Key", viewer)], 403),  # viewers may not create
        ("/api/v1/no-such-route", [("X-API-Key", viewer)], 404),
        ("/health", [], 405),
        ("/api/v1/tasks", [("X-API-Key", limited)], 429),  # its one request a minute: below
    ]
    async with one_connection(server.port) as connection:
        with trio.fail_after(BOUND_S):
            spent = await connection.post_body_late("/api/v1/tasks", [("X-API-Key", limited)])
        assert spent.status == 201, spent.body
        connection.reuse()
        statuses: list[int] = []
        with trio.fail_after(BOUND_S * 4):
            for i in range(REFUSED_PER_CONNECTION):
                target, headers, expected = refusals[i % len(refusals)]
                answer = await connection.post_body_late(target, headers)
                assert answer.status == expected, (i, answer)
                assert json.loads(answer.body)["status"] == "error"
                assert not connection.server_closes, (i, answer)  # drained, kept alive
                statuses.append(answer.status)
                connection.reuse()
        assert len(statuses) == REFUSED_PER_CONNECTION
        assert set(statuses) == {401, 403, 404, 405, 429}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_bodies_are_answered_and_the_close_is_announced(
    server: InProcessServer, chunked: bool
) -> None:
    limit = server.settings.max_body_bytes
    operator = await make_key(server, "operator")
    for _ in range(20):  # every one answered, none silently dropped
        async with one_connection(server.port) as connection:
            with trio.fail_after(BOUND_S):
                answer = await connection.post_oversized("/api/v1/tasks", operator, 4 * limit,
                                                         chunked=chunked)  # fmt: skip
            assert answer.status == 413, answer
            assert json.loads(answer.body)["error"]["details"]["field"] == "body"
            # The body was not read, so the connection cannot be reused: the server says so.
            assert answer.headers.get(b"connection") == b"close"
            assert connection.server_closes
