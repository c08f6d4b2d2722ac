"""The fast-lane session as a WebSocket, `/ws/session` on the HTTP port, for networks where
only HTTP gets through: each binary message is one MessagePack message (no length prefix)."""

from __future__ import annotations

from typing import Any

from quart import websocket

from dtq.net.protocol.hub import Hub
from dtq.net.protocol.listener import max_frame_bytes
from dtq.net.protocol.session import Session
from dtq.net.routing import Services

PATH = "/ws/session"


def register_session_websocket(app: Any, svc: Services, hub: Hub) -> None:
    limit = max_frame_bytes(svc.settings)

    @app.websocket(PATH)
    async def ws_session() -> None:
        await websocket.accept()
        session = Session(svc, hub, websocket.remote_addr or "unknown", limit)

        async def receive() -> bytes | str | None:
            data = await websocket.receive()
            return data if isinstance(data, str) else bytes(data)

        async def write(batch: list[bytes]) -> None:
            for payload in batch:
                await websocket.send(payload)

        await session.run(receive, write)
