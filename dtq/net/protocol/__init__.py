"""The fast lane, server side: length-prefixed MessagePack frames on a TCP port of their own
(and the same session as a WebSocket at `/ws/session`). docs/protocol.md is the reference.

The framing (`FrameDecoder`, no I/O) and the messages are in `dtq.wire`, shared with the
client; `session` maps messages to the same core
calls, auth, rate limits and fencing as the REST routes; `hub` sends `cancelled` notices to the
connection holding a task; `listener` is the trio TCP (and TLS) server; `ws` the WebSocket.
"""

from dtq.net.protocol.hub import Hub
from dtq.net.protocol.listener import protocol_port_to_bind, serve_protocol
from dtq.net.protocol.ws import register_session_websocket

__all__ = ["Hub", "protocol_port_to_bind", "register_session_websocket", "serve_protocol"]
