"""Identifiers. `random` rather than os.urandom: task and lease ids need uniqueness, not
secrecy (callers are authenticated; a lease id is a fencing token, not a credential), and a
getrandom syscall per id was measurable on the hot path."""

from __future__ import annotations

import random
import uuid

_V4_MASK = ~(0xF000 << 64) & ~(0xC000 << 48) & ((1 << 128) - 1)
_V4_BITS = (0x4000 << 64) | (0x8000 << 48)


def new_task_id() -> str:
    """A random version-4 UUID."""
    return str(uuid.UUID(int=random.getrandbits(128) & _V4_MASK | _V4_BITS))


def new_lease_id() -> str:
    return f"{random.getrandbits(96):024x}"
