"""WebSocket credentials follow the HTTP rule (issue 8, finding 7): exactly one, wherever it is
sent (header, query, subprotocol); a second one, valid or not, is 401 before the upgrade."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

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
