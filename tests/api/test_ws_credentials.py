"""WebSocket credentials follow the HTTP rule (issue 8, finding 7): exactly one, wherever it is
sent (header, query, subprotocol); a second one, valid or not, is 401 before the upgrade."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from .test_websockets import Server, _refused, _start


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        srv = await _start(tmp_path, nursery)
        try:
            yield srv
        finally:
            await srv.http.aclose()
            srv.stop.set()


async def _key(server: Server) -> str:
    r = await server.http.post(
        "/api/v1/api-keys", json={"name": "k", "role": "admin"}, headers=server.auth
    )
    return str(r.json()["data"]["key"])


async def test_more_than_one_credential_is_refused(server: Server) -> None:
    key, token = await _key(server), server.token
    bearer = {"Authorization": f"Bearer {token}"}
    cases: list[tuple[str, dict[str, str]]] = [
        (f"/ws/tasks?token={token}", {"X-API-Key": key}),  # both valid
        ("/ws/tasks?token=forged", {"X-API-Key": key}),  # valid key, bad token
        (f"/ws/tasks?api_key={key}", bearer),
        (f"/ws/tasks?token={token}&api_key=junk", {}),
        (f"/ws/tasks?token={token}&token={token}", {}),
        (f"/ws/tasks?token={token}", {"Sec-WebSocket-Protocol": f"bearer, {token}"}),
        ("/ws/tasks", {**bearer, "Sec-WebSocket-Protocol": "bearer, forged"}),
        ("/ws/tasks", {"X-API-Key": key, "Authorization": "Bearer forged"}),
        ("/ws/metrics", {"X-API-Key": key, "Authorization": "Basic YWRtaW46cGFzc3dvcmQ="}),
        ("/ws/tasks", {"Sec-WebSocket-Protocol": "bearer"}),  # no token after "bearer"
    ]
    for path, headers in cases:
        status, body = await _refused(server, path, headers)
        assert status == 401, (path, headers, body)
        assert body["error"]["code"] == "UNAUTHORIZED"


async def test_one_credential_in_any_place_still_works(server: Server) -> None:
    key = await _key(server)
    for url, headers in (
        (server.ws(f"/ws/tasks?api_key={key}"), []),
        (server.ws("/ws/tasks"), [("X-API-Key", key)]),
        (server.ws(f"/ws/tasks?token={server.token}"), []),
    ):
        async with open_websocket_url(url, extra_headers=headers) as ws:
            await server.create()
            with trio.fail_after(5):
                assert '"task.created"' in str(await ws.get_message())


@pytest.fixture
async def rechecking(tmp_path: Path) -> AsyncIterator[Server]:
    """A server whose open sockets check their credentials every 0.1 s (and ping as often)."""
    async with trio.open_nursery() as nursery:
        srv = await _start(tmp_path, nursery, ws_recheck_s=0.1, ws_idle_ping_s=0.1)
        try:
            yield srv
        finally:
            await srv.http.aclose()
            srv.stop.set()


async def _new_key(server: Server, role: str = "admin") -> tuple[str, str]:
    r = await server.http.post(
        "/api/v1/api-keys", json={"name": "k", "role": role}, headers=server.auth
    )
    data = r.json()["data"]
    return str(data["key"]), str(data["key_id"])


# trio-websocket leaves its socket to the garbage collector when the server closes first.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("path", ["/ws/tasks", "/ws/metrics?interval=0.1"])
async def test_a_revoked_key_closes_the_socket_it_opened(rechecking: Server, path: str) -> None:
    key, key_id = await _new_key(rechecking)
    async with open_websocket_url(rechecking.ws(path), extra_headers=[("X-API-Key", key)]) as ws:
        with trio.fail_after(5):
            for _ in range(3):  # several checks pass while the key holds
                await ws.get_message()
        revoked = await rechecking.http.delete(f"/api/v1/api-keys/{key_id}",
                                               headers=rechecking.auth)  # fmt: skip
        assert revoked.status_code == 204
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
    assert closed.value.reason.code == 1008
    assert (closed.value.reason.reason or "").startswith("UNAUTHORIZED")
    del ws, closed
    gc.collect()  # collect that socket here, under this test's warning filter


async def test_a_socket_whose_credentials_hold_stays_open(rechecking: Server) -> None:
    key, _ = await _new_key(rechecking, role="viewer")
    url = rechecking.ws("/ws/tasks")
    async with open_websocket_url(url, extra_headers=[("X-API-Key", key)]) as ws:
        with trio.fail_after(5):
            for _ in range(5):  # pings 0.1 s apart: checks ran meanwhile
                assert '"ping"' in str(await ws.get_message())
            await rechecking.create()
            while '"task.created"' not in str(await ws.get_message()):
                pass
