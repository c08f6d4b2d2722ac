"""The fast lane's messages: one persistent connection, many small MessagePack messages.

Shared by the server (`dtq.net.protocol`) and the client (`dtq.client.transport*`); the
framing, every message and every error are described in docs/protocol.md.

A frame on TCP is a 4-byte unsigned big-endian length, then that many bytes: one MessagePack
map with an `op` field naming the message (a tagged union). On the WebSocket (`/ws/session`)
each binary message is one such map, without the length prefix.

Requests carry an `id` (chosen by the client, 1 .. 2^63-1) and get exactly one reply with
the same `id` (`reply` or `error`), in any order: a client may pipeline as many as it likes.
A request that mirrors a REST call takes the REST body as `body` (decoded with the same model,
so it is refused with the same error) and the path's task id as `task_id`; its reply's `data`
is what REST puts in the envelope's `data`, and `status` the HTTP status REST would answer.

The server also sends, unasked, `push` (tasks leased to this connection in push mode, after
the worker granted `credit`), `cancelled` (a task this connection holds was cancelled or
deleted) and `error` with `id` 0 (about the connection itself, e.g. a frame it could not read).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Raw, Struct

from dtq.messages import TaskOut
from dtq.models import LeaseSeconds, Name, QueueName, WorkerId

PROTOCOL_VERSION = 1
HEADER_BYTES = 4  # the length prefix: unsigned, big-endian
BYTE_ORDER: Literal["big"] = "big"
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024  # the server's limit is in `welcome`
MAX_REQUEST_ID = 2**63 - 1

RequestId = Annotated[int, Meta(ge=1, le=MAX_REQUEST_ID)]
TaskIdField = Annotated[str, Meta(max_length=64)]


class _Request(Struct, tag_field="op", forbid_unknown_fields=True, kw_only=True):
    id: RequestId


# -- client -> server ----------------------------------------------------------------------


class Hello(_Request, tag="hello"):
    """The first message on every connection: exactly one of `api_key` or `token` (a JWT)."""

    api_key: str | None = None
    token: str | None = None
    client: Annotated[str, Meta(max_length=200)] | None = None


class Ping(_Request, tag="ping"):
    pass


class Submit(_Request, tag="submit"):
    body: Raw  # POST /api/v1/tasks (TaskCreate)


class SubmitMany(_Request, tag="submit_many"):
    body: Raw  # POST /api/v1/tasks/batch ({"tasks": [TaskCreate, ...]})


class Get(_Request, tag="get"):
    task_id: TaskIdField


class Cancel(_Request, tag="cancel"):
    task_id: TaskIdField


class Lease(_Request, tag="lease"):
    body: Raw  # POST /api/v1/tasks/lease (LeaseRequest): the long poll, over the connection


class Credit(_Request, tag="credit"):
    """Push mode: the server may push `n` more tasks (added to what is left), leased with
    these filters (they replace the previous ones)."""

    n: Annotated[int, Meta(ge=0, le=10_000)]
    worker_id: WorkerId
    queues: Annotated[list[QueueName], Meta(min_length=1, max_length=100)] | None = None
    names: Annotated[list[Name], Meta(min_length=1, max_length=100)] | None = None
    lease_seconds: LeaseSeconds | None = None


class Pause(_Request, tag="pause"):
    """Push mode off: credit back to 0; no push follows the reply."""


class Started(_Request, tag="started"):
    """The worker has these pushed tasks in hand: from now on a dropped connection leaves
    their leases to expire as usual, instead of handing them back at once."""

    task_ids: Annotated[list[TaskIdField], Meta(max_length=10_000)]


class Complete(_Request, tag="complete"):
    task_id: TaskIdField
    body: Raw  # CompleteRequest


class Fail(_Request, tag="fail"):
    task_id: TaskIdField
    body: Raw  # FailRequest


class Extend(_Request, tag="extend"):
    task_id: TaskIdField
    body: Raw  # ExtendRequest


class Release(_Request, tag="release"):
    task_id: TaskIdField
    body: Raw  # ReleaseRequest


class Ack(_Request, tag="ack"):
    body: Raw  # AckRequest ({"acks": [...]})


class Heartbeat(_Request, tag="heartbeat"):
    body: Raw  # Heartbeat


Request = (
    Hello | Ping | Submit | SubmitMany | Get | Cancel | Lease | Credit | Pause | Started
    | Complete | Fail | Extend | Release | Ack | Heartbeat
)  # fmt: skip
REQUEST_OPS: tuple[str, ...] = tuple(
    t.__struct_config__.tag  # type: ignore[misc]
    for t in (Hello, Ping, Submit, SubmitMany, Get, Cancel, Lease, Credit, Pause, Started,
              Complete, Fail, Extend, Release, Ack, Heartbeat)
)  # fmt: skip


class AnyId(Struct):
    """What is read of a request that does not decode: its id, to address the error to it."""

    id: int = 0


# -- server -> client ----------------------------------------------------------------------


class _Out(Struct, tag_field="op", omit_defaults=True, kw_only=True):
    pass


class Welcome(_Out, tag="welcome"):
    id: int
    protocol: int
    server: str
    max_frame_bytes: int
    role: str
    principal: str  # "api_key:<name>" or "user:<username>", as fencing knows the caller


class Reply(_Out, tag="reply"):
    id: int
    status: int  # the HTTP status REST answers with (200, 201)
    data: Any = None


class Error(_Out, tag="error"):
    id: int  # 0: about the connection, not one request
    status: int  # the HTTP status REST answers with (400, 401, 403, 404, 409, 429, 503 ...)
    code: str  # the guide's codes: INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN, NOT_FOUND ...
    message: str
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    retry_after_s: int | None = None  # RATE_LIMITED / SERVICE_UNAVAILABLE: when to try again
    closing: bool = False  # the server closes the connection after this frame


class Push(_Out, tag="push"):
    tasks: list[TaskOut]  # each with its lease, id included, as the lease reply has them


class Cancelled(_Out, tag="cancelled"):
    task_id: str
    status: str  # "cancelled" or "deleted"


ServerMessage = Welcome | Reply | Error | Push | Cancelled


class ReplyIn(Struct, tag_field="op", tag="reply"):
    """A client's view of `reply`: `data` is decoded later, with the type the call expects."""

    id: int
    status: int
    data: Raw = Raw(b"\xc0")


ClientView = Welcome | ReplyIn | Error | Push | Cancelled


class FrameTooLarge(Exception):
    """A frame header announced more than the limit: the stream cannot be trusted further."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame of {length} bytes is larger than the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class FrameDecoder:
    """`feed(data)` then `next_frame()` until it returns None."""

    __slots__ = ("_buffer", "_start", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._start = 0  # consumed bytes at the front, dropped in one go (no copy per frame)

    def feed(self, data: bytes | bytearray) -> None:
        if self._start and self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next whole frame's payload, or None until more bytes come; `FrameTooLarge` as
        soon as a header announces too much (before its bytes arrive)."""
        buf, start = self._buffer, self._start
        if len(buf) - start < HEADER_BYTES:
            self._compact()
            return None
        length = int.from_bytes(buf[start : start + HEADER_BYTES], BYTE_ORDER)
        if length > self.limit:
            raise FrameTooLarge(length, self.limit)
        end = start + HEADER_BYTES + length
        if len(buf) < end:
            self._compact()
            return None
        payload = bytes(buf[start + HEADER_BYTES : end])
        self._start = end
        return payload

    def _compact(self) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer) - self._start


def header(length: int) -> bytes:
    return length.to_bytes(HEADER_BYTES, BYTE_ORDER)


def frame(payload: bytes) -> bytes:
    """One TCP frame: the length prefix, then the MessagePack message."""
    return header(len(payload)) + payload


encoder = msgspec.msgpack.Encoder()
request_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(Request)
any_id_decoder = msgspec.msgpack.Decoder(AnyId)
client_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(ClientView)
