"""Identifiers.

Task ids are UUIDv7 (RFC 9562): a millisecond timestamp then random bits. Time-ordered keys keep
each group commit's new tasks on a few B-tree pages instead of one page per task, which made
fsync'd commits several times cheaper (random UUID4 keys touched a page per task).
`random` rather than os.urandom: ids need uniqueness, not secrecy (callers are authenticated;
a lease id is a fencing token, not a credential), and a syscall per id was measurable."""

from __future__ import annotations

import random
import time
import uuid


def new_task_id() -> str:
    """A version-7 UUID: 48-bit Unix milliseconds, version, 12 + 62 random bits, variant."""
    ms = time.time_ns() // 1_000_000
    rand = random.getrandbits(74)
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 62) << 64
        | 0b10 << 62
        | (rand & ((1 << 62) - 1))
    )
    return str(uuid.UUID(int=value))


def new_lease_id() -> str:
    return f"{random.getrandbits(96):024x}"


def new_request_id() -> str:
    """For X-Request-ID when the client sent none (log correlation only)."""
    return f"{random.getrandbits(128):032x}"
