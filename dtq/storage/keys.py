"""Key layouts. Fixed-width big-endian numbers so LMDB's byte order is the index order.

Times in keys are integer microseconds since the epoch.
"""

from __future__ import annotations

import hashlib
import math
import struct

from dtq.models import Priority, TaskStatus

_U64 = 8
SEP = b"\x00"  # queue names and worker ids never contain NUL (validated at the boundary)

STATUS_BYTE = {s: i.to_bytes(1, "big") for i, s in enumerate(TaskStatus)}
PRIORITY_BYTE = {p: p.rank.to_bytes(1, "big") for p in Priority}
PRIORITY_FROM_RANK = {p.rank: p for p in Priority}


_pack_u64 = struct.Struct(">Q").pack
_pack_u64x2 = struct.Struct(">QQ").pack


def u64(n: int) -> bytes:
    return _pack_u64(n)


def from_u64(b: bytes) -> int:
    return int.from_bytes(b, "big")


def micros(t: float) -> int:
    return int(t * 1_000_000)


def micros_ceil(t: float) -> int:
    """Rounded up: a deadline read back from a key is never earlier than the real one."""
    return math.ceil(t * 1_000_000)


def task_key(task_id: str) -> bytes:
    """Canonical (validated at the boundary) UUID text -> 16 bytes; 10x cheaper than uuid.UUID."""
    return bytes.fromhex(task_id.replace("-", ""))


def task_id_from_key(key: bytes) -> str:
    h = key.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def ready_prefix(queue: str) -> bytes:
    return queue.encode() + SEP


def ready_key(queue: str, priority: Priority, seq: int) -> bytes:
    """queue NUL | priority rank (1) | enqueue seq (8)  ->  task key (16) + name."""
    return ready_prefix(queue) + PRIORITY_BYTE[priority] + u64(seq)


def time_id_key(t: float, seq: int, tkey: bytes) -> bytes:
    """when (8) | seq (8) | task key (16): the created/updated listing indexes. The enqueue
    seq breaks ties between tasks of one group commit (they share a timestamp)."""
    return _pack_u64x2(int(t * 1_000_000), seq) + tkey


def status_key(status: TaskStatus, created_at: float, seq: int, tkey: bytes) -> bytes:
    return STATUS_BYTE[status] + time_id_key(created_at, seq, tkey)


def priority_key(priority: Priority, created_at: float, seq: int, tkey: bytes) -> bytes:
    return PRIORITY_BYTE[priority] + time_id_key(created_at, seq, tkey)


def worker_index_key(worker_id: str, created_at: float, seq: int, tkey: bytes) -> bytes:
    return worker_id.encode() + SEP + time_id_key(created_at, seq, tkey)


def queue_prefix(queue: str) -> bytes:
    return queue.encode() + SEP


def queue_index_key(queue: str, created_at: float, seq: int, tkey: bytes) -> bytes:
    return queue_prefix(queue) + time_id_key(created_at, seq, tkey)


def name_prefix(name: str) -> bytes:
    """A task name may hold any character (NUL too) and be longer than LMDB's 511-byte keys
    allow, so the index is keyed by a 16-byte hash of it (collisions: about 2**-64)."""
    return hashlib.blake2b(name.encode(), digest_size=16).digest()


def name_index_key(name: str, created_at: float, seq: int, tkey: bytes) -> bytes:
    return name_prefix(name) + time_id_key(created_at, seq, tkey)


def day_key(day_number: int) -> bytes:
    """Days since the epoch (UTC)."""
    return u64(day_number)


def finished_key(status: TaskStatus, completed_at: float, seq: int, tkey: bytes) -> bytes:
    """status | completed_us | seq | task key: the finish-time index (final states only),
    which retention, redrive and purge walk in time order without a scan."""
    return STATUS_BYTE[status] + time_id_key(completed_at, seq, tkey)


def finished_position(status: TaskStatus, completed_us: int, seq: int) -> bytes:
    """The smallest `finished_key` at or after (completed_us, seq) of `status` (times before
    the epoch or past 2**64 µs clamp to the ends of the index)."""
    us = min(max(completed_us, 0), 2**64 - 1)
    return STATUS_BYTE[status] + _pack_u64x2(us, min(max(seq, 0), 2**64 - 1))


def tag_prefix(tag: str) -> bytes:
    return tag.encode() + SEP  # tags hold no NUL (validated at the boundary), <= 64 chars


def tag_index_key(tag: str, created_at: float, seq: int, tkey: bytes) -> bytes:
    return tag_prefix(tag) + time_id_key(created_at, seq, tkey)


def event_key(tkey: bytes, n: int) -> bytes:
    """task key (16) | event number (8): one range read gives a task's events in order."""
    return tkey + _pack_u64(n)
