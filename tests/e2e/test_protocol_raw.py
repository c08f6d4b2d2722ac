"""The fast lane's conformance, on raw frames (no SDK): a real `dtq serve` process, a plain
socket, MessagePack frames as docs/protocol.md describes them."""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from .procs import Processes, Server

pytestmark = pytest.mark.e2e
TIMEOUT_S = 10.0


class Raw:
    """One connection: frames out, frames in, nothing else."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.ids = iter(range(1, 1 << 30))
        self.others: list[dict[str, Any]] = []

    def send_bytes(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def send(self, message: dict[str, Any]) -> None:
        self.send_bytes(msgspec.msgpack.encode(message))

    def request(self, op: str, **fields: Any) -> int:
        rid = next(self.ids)
        self.send({"op": op, "id": rid, **fields})
        return rid

    def recv(self) -> dict[str, Any] | None:
        """The next message, or None when the server closed the connection."""
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    payload, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    message: dict[str, Any] = msgspec.msgpack.decode(payload)
                    return message
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data

    def reply_to(self, rid: int) -> dict[str, Any]:
        """The reply to request `rid`, keeping others aside (replies come in any order)."""
        for i, kept in enumerate(self.others):
            if kept.get("id") == rid:
                return self.others.pop(i)
        while True:
            message = self.recv()
            assert message is not None, "connection closed"
            if message.get("id") == rid:
                return message
            self.others.append(message)

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.reply_to(self.request(op, **fields))

    def pushed_tasks(self, n: int) -> list[dict[str, Any]]:
        """The tasks of the next `push` frames, until `n` have come (other frames dropped)."""
        pushed: list[dict[str, Any]] = []
        while len(pushed) < n:
            message = self.recv()
            assert message is not None, "connection closed"
            if message["op"] == "push":
                pushed.extend(message["tasks"])
        return pushed

    def closed(self) -> bool:
        return self.recv() is None

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def lane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str, int]]:
    """A real `dtq serve` with the fast lane on, and an admin and a worker key."""
    base = tmp_path_factory.mktemp("raw-protocol")
    procs = Processes(base / "logs")
    try:
        server = Server(procs, base / "data").start()
        admin_key, worker_key, viewer_key = server.create_keys("admin", "worker", "viewer")
        port = int(server.env["DTQ_PROTOCOL_PORT"])
        del viewer_key
        yield server, admin_key, worker_key, port
    finally:
        procs.kill_all()


def connect(port: int, key: str) -> Raw:
    raw = Raw(port)
    rid = raw.request("hello", api_key=key)
    welcome = raw.reply_to(rid)
    assert welcome["op"] == "welcome", welcome
    return raw


def test_a_connection_reset_by_its_peer_leaves_the_server_serving(lane: Any) -> None:
    """A worker that dies mid-conversation resets its connection (RST, not FIN): only that
    connection ends."""
    _, admin_key, _, port = lane
    for _ in range(3):
        raw = connect(port, admin_key)
        for i in range(20):  # replies still on their way when the RST lands
            raw.request("submit", body={"name": "reset", "payload": {"i": i}, "queue": "rst"})
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()  # SO_LINGER 0: close sends RST
    after = connect(port, admin_key)
    assert after.call("ping")["op"] == "reply"
    after.close()


def test_health_reports_the_protocol_port(lane: Any) -> None:
    import httpx

    server, _, _, port = lane
    assert httpx.get(f"{server.url}/health").json()["protocol_port"] == port


def test_every_operation_on_raw_frames(lane: Any) -> None:
    _, admin_key, worker_key, port = lane
    producer = connect(port, admin_key)
    worker = connect(port, worker_key)
    try:
        assert producer.call("ping") == {"op": "reply", "id": 1 + 1, "status": 200}
        created = producer.call("submit", body={"name": "raw", "queue": "raw", "payload": {"n": 1},
                                                "idempotency_key": "raw-1"})  # fmt: skip
        assert (created["op"], created["status"]) == ("reply", 201)
        task = created["data"]
        assert task["status"] == "pending" and task["payload"] == {"n": 1}
        again = producer.call("submit", body={"name": "raw", "queue": "raw", "payload": {"n": 1},
                                              "idempotency_key": "raw-1"})  # fmt: skip
        assert (again["status"], again["data"]["id"]) == (200, task["id"])  # a replay
        many = producer.call("submit_many", body={"tasks": [
            {"name": "raw", "queue": "raw", "payload": {"n": i}} for i in (2, 3, 4)]})  # fmt: skip
        assert many["status"] == 201 and len(many["data"]) == 3
        got = producer.call("get", task_id=task["id"])
        assert got["data"]["id"] == task["id"]

        leased = worker.call("lease", body={"worker_id": "raw-w", "queues": ["raw"],
                                            "max_tasks": 2, "wait": 1})  # fmt: skip
        first, second = leased["data"]
        assert first["lease"]["id"] and first["status"] == "running"
        ext = worker.call(
            "extend",
            task_id=first["id"],
            body={"lease_id": first["lease"]["id"], "lease_seconds": 30},
        )
        assert ext["status"] == 200 and "id" not in ext["data"]["lease"]  # never shown again
        done = worker.call(
            "complete",
            task_id=first["id"],
            body={"lease_id": first["lease"]["id"], "result": {"ok": True}},
        )
        assert done["data"]["status"] == "completed" and done["data"]["result"] == {"ok": True}
        stale = worker.call(
            "complete", task_id=first["id"], body={"lease_id": first["lease"]["id"]}
        )
        assert (stale["op"], stale["status"], stale["code"]) == ("error", 409, "CONFLICT")
        back = worker.call(
            "release", task_id=second["id"], body={"lease_id": second["lease"]["id"]}
        )
        assert back["data"]["status"] == "pending"

        leased = worker.call("lease", body={"worker_id": "raw-w", "queues": ["raw"],
                                            "max_tasks": 3, "wait": 1})["data"]  # fmt: skip
        assert len(leased) == 3
        failed = worker.call(
            "fail",
            task_id=leased[0]["id"],
            body={"lease_id": leased[0]["lease"]["id"], "error": "nope"},
        )
        assert failed["data"]["status"] == "failed"
        acked = worker.call("ack", body={"acks": [
            {"id": t["id"], "lease_id": t["lease"]["id"], "status": "completed"}
            for t in leased[1:]]})  # fmt: skip
        assert acked["data"]["succeeded"] == 2 and acked["data"]["failed"] == 0
        beat = worker.call("heartbeat", body={"worker_id": "raw-w", "max_capacity": 2})
        assert beat["data"]["worker_id"] == "raw-w" and beat["data"]["status"] == "active"

        pending = producer.call("submit", body={"name": "raw", "queue": "raw-cancel"})["data"]
        cancelled = producer.call("cancel", task_id=pending["id"])
        assert cancelled["data"]["status"] == "cancelled"
    finally:
        producer.close()
        worker.close()


def test_pipelined_requests_are_all_answered(lane: Any) -> None:
    _, admin_key, _, port = lane
    raw = connect(port, admin_key)
    try:
        rids = [raw.request("submit", body={"name": "pipe", "queue": "pipe", "payload": {"i": i}})
                for i in range(200)]  # fmt: skip
        replies = {rid: raw.reply_to(rid) for rid in rids}
        assert all(r["status"] == 201 for r in replies.values())
        assert len({r["data"]["id"] for r in replies.values()}) == 200
    finally:
        raw.close()


def test_errors_carry_the_guides_codes_and_rest_field_names(lane: Any) -> None:
    _, admin_key, worker_key, port = lane
    raw = connect(port, admin_key)
    worker = connect(port, worker_key)
    try:
        bad = raw.call("submit", body={"name": "x", "priority": "urgent"})
        assert (bad["status"], bad["code"], bad["details"]["field"]) == (
            400,
            "INVALID_REQUEST",
            "priority",
        )
        unknown = raw.call("submit", body={"name": "x", "nope": 1})
        assert unknown["details"]["field"] == "nope"
        missing = raw.call("get", task_id=str(uuid.uuid4()))
        assert (missing["status"], missing["code"]) == (404, "NOT_FOUND")
        not_uuid = raw.call("get", task_id="abc")
        assert (not_uuid["code"], not_uuid["details"]["field"]) == ("INVALID_REQUEST", "task_id")
        forbidden = worker.call("cancel", task_id=str(uuid.uuid4()))  # workers may not cancel
        assert (forbidden["status"], forbidden["code"]) == (403, "FORBIDDEN")
        assert raw.call("ping")["status"] == 200  # the connection survived all of that
    finally:
        raw.close()
        worker.close()


def test_auth_is_refused_before_any_other_message(lane: Any) -> None:
    _, _, _, port = lane
    raw = Raw(port)
    rid = raw.request("submit", body={"name": "sneaky"})
    refused = raw.reply_to(rid)
    assert (refused["code"], refused["closing"]) == ("UNAUTHORIZED", True)
    assert raw.closed()
    raw.close()

    raw = Raw(port)
    refused = raw.call("hello", api_key="dtq_nope_nope")
    assert (refused["status"], refused["code"]) == (401, "UNAUTHORIZED")
    assert raw.closed()
    raw.close()

    raw = Raw(port)
    refused = raw.call("hello")
    assert refused["code"] == "UNAUTHORIZED"
    assert raw.closed()
    raw.close()


def test_malformed_and_unknown_frames_get_an_error_and_the_connection_survives(
    lane: Any,
) -> None:
    _, admin_key, _, port = lane
    raw = connect(port, admin_key)
    try:
        raw.send_bytes(b"\xc1\xc1 not msgpack")
        err = raw.recv()
        assert err is not None and (err["op"], err["id"], err["code"]) == (
            "error",
            0,
            "INVALID_REQUEST",
        )
        unknown = raw.call("teleport")
        assert (unknown["code"], unknown["details"]["field"]) == ("INVALID_REQUEST", "op")
        extra = raw.call("ping", colour="blue")
        assert extra["code"] == "INVALID_REQUEST"
        raw.send_bytes(b"")  # an empty frame
        assert raw.recv()["code"] == "INVALID_REQUEST"  # type: ignore[index]
        assert raw.call("ping")["status"] == 200
    finally:
        raw.close()


def test_an_oversized_frame_is_refused_and_the_connection_closed_cleanly(lane: Any) -> None:
    _, admin_key, _, port = lane
    raw = connect(port, admin_key)
    try:
        raw.sock.sendall(struct.pack(">I", 1 << 31))  # announces 2 GiB; nothing follows
        err = raw.recv()
        assert err is not None and err["details"]["reason"] == "frame too large"
        assert err["closing"] is True
        assert raw.closed()
    finally:
        raw.close()
    connect(port, admin_key).close()  # the server is fine


def test_push_mode_and_dropped_connections_hand_unstarted_tasks_back(lane: Any) -> None:
    _, admin_key, worker_key, port = lane
    producer = connect(port, admin_key)
    worker = connect(port, worker_key)
    try:
        granted = worker.call("credit", n=2, worker_id="push-w", queues=["push"])
        assert granted["data"] == {"credit": 2}
        ids = [producer.call("submit", body={"name": "p", "queue": "push"})["data"]["id"]
               for _ in range(3)]  # fmt: skip
        pushed = worker.pushed_tasks(2)
        assert {t["id"] for t in pushed} <= set(ids) and all(t["lease"]["id"] for t in pushed)
        started = worker.call("started", task_ids=[pushed[0]["id"]])
        assert started["data"] == {"started": 1}
        # Cancelling a task this connection holds: the server says so at once.
        producer.call("cancel", task_id=pushed[0]["id"])
        while True:
            message = worker.recv()
            assert message is not None
            if message["op"] == "cancelled":
                assert message["task_id"] == pushed[0]["id"]
                break
    finally:
        worker.close()  # drops the connection: the unstarted pushed task is ready again now
    try:
        other = connect(port, worker_key)
        seen: set[str] = set()
        for _ in range(5):  # the server notices the drop within moments; leases last 60 s
            leased = other.call("lease", body={"worker_id": "other", "queues": ["push"],
                                               "max_tasks": 5, "wait": 2})["data"]  # fmt: skip
            seen |= {t["id"] for t in leased}
            if pushed[1]["id"] in seen:
                break
        assert pushed[1]["id"] in seen  # handed back at once, not when its lease ran out
        other.close()
    finally:
        producer.close()


def test_a_started_sent_just_before_the_connection_ends_still_counts(lane: Any) -> None:
    """A worker killed as its handler begins: its `started` and the end of the stream arrive
    together. The server applies `started` as it reads it, so the started task stays leased
    (its lease expires, counting the attempt) and only the unstarted one is handed back."""
    _, admin_key, worker_key, port = lane
    producer = connect(port, admin_key)
    try:
        for attempt in range(5):  # each round a fresh pair: the race, if any, shows in a few
            queue = f"started-eof-{attempt}"
            worker = connect(port, worker_key)
            worker.call("credit", n=2, worker_id="eof-w", queues=[queue])
            for _ in range(2):
                producer.call("submit", body={"name": "p", "queue": queue})
            pushed = worker.pushed_tasks(2)
            started, unstarted = pushed
            worker.request("started", task_ids=[started["id"]])  # no wait for the reply...
            worker.sock.shutdown(socket.SHUT_WR)  # ...and the stream ends right behind it
            worker.close()
            other = connect(port, worker_key)
            seen: set[str] = set()
            for _ in range(5):
                leased = other.call("lease", body={"worker_id": "other", "queues": [queue],
                                                   "max_tasks": 2, "wait": 2})["data"]  # fmt: skip
                seen |= {t["id"] for t in leased}
                if unstarted["id"] in seen:
                    break
            other.close()
            assert seen == {unstarted["id"]}  # handed back; the started one was not
            held = producer.call("get", task_id=started["id"])["data"]
            assert held["status"] == "running" and held["worker_id"] == "eof-w"
    finally:
        producer.close()


def test_kill_9_with_pipelined_submits_in_flight_loses_no_acknowledged_task(
    tmp_path: Path,
) -> None:
    procs = Processes(tmp_path / "logs")
    try:
        server = Server(procs, tmp_path / "data")
        server.env["DTQ_DURABILITY"] = "fsync"
        server.start()
        (admin_key,) = server.create_keys("admin")
        port = int(server.env["DTQ_PROTOCOL_PORT"])
        raw = connect(port, admin_key)
        for i in range(2000):  # all sent before any reply is read: pipelined
            raw.request("submit", body={"name": "crash", "queue": "crash", "payload": {"i": i}})
        acknowledged: list[str] = []
        while len(acknowledged) < 300:
            message = raw.recv()
            assert message is not None
            if message["op"] == "reply":
                acknowledged.append(message["data"]["id"])
        assert server.proc is not None
        server.proc.popen.kill()  # kill -9 with most of the 2,000 still in flight
        server.proc.popen.wait(timeout=TIMEOUT_S)
        while (message := _recv_or_none(raw)) is not None:  # replies already on the wire
            if message["op"] == "reply":
                acknowledged.append(message["data"]["id"])
        raw.close()
        server.start()
        survivor = connect(port, admin_key)
        lost = [tid for tid in acknowledged if survivor.call("get", task_id=tid)["op"] != "reply"]
        survivor.close()
        assert lost == [], f"{len(lost)} of {len(acknowledged)} acknowledged tasks lost"
    finally:
        procs.kill_all()


def _recv_or_none(raw: Raw) -> dict[str, Any] | None:
    try:
        return raw.recv()
    except OSError:  # reset by the dead server
        return None
