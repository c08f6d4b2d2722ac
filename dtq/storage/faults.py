"""What a failed write means to the user: LMDB's errors mapped once, at the storage boundary.

A full or unwritable disk must read as what it is, with the data directory named, whatever the
errno LMDB passes on: it reports a short write (the usual sign of a full filesystem) as EIO, a
write that could not start as ENOSPC, a quota as EDQUOT.
"""

from __future__ import annotations

import errno

import lmdb

from dtq.errors import StorageError

__all__ = ["RETRY_AFTER_S", "write_failure"]

RETRY_AFTER_S = 10  # a full disk needs someone to act; clients come back after this

# errno -> (details.reason, what happened, in words)
_CAUSES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("disk_full", "no space left on device"),
    errno.EDQUOT: ("disk_full", "disk quota exceeded"),
    errno.EFBIG: ("disk_full", "file too large for the filesystem"),
    errno.EIO: ("storage_unwritable", "input/output error: the disk is full or failing"),
    errno.EROFS: ("storage_unwritable", "read-only file system"),
    errno.EACCES: ("storage_unwritable", "permission denied"),
    errno.EPERM: ("storage_unwritable", "operation not permitted"),
}


def write_failure(exc: lmdb.Error | OSError, path: str, *, growing: bool = False) -> StorageError:
    """The 503 for a write transaction that failed with `exc` on the store at `path`.

    `growing`: `exc` came from enlarging a full map (the database cannot grow any more).
    """
    # py-lmdb: the errno, or LMDB's own MDB_* code; the write-ahead log: an OSError's errno
    code = exc.errno if isinstance(exc, OSError) else getattr(exc, "code", None)
    errno_name = errno.errorcode.get(code) if isinstance(code, int) and code > 0 else None
    if growing:
        reason, cause = "storage_full", f"the database cannot grow: {_lmdb_text(exc)}"
    elif isinstance(code, int) and code in _CAUSES:
        reason, cause = _CAUSES[code]
    else:
        reason, cause = "storage_error", _lmdb_text(exc)
    details: dict[str, object] = {"path": path}
    if errno_name is not None:
        details["errno"] = errno_name
    what = "storage write failed at" if reason == "storage_error" else "disk full or unwritable:"
    return StorageError(
        f"{what} {path} ({cause}); stored data is intact and readable, writes resume once "
        f"that is fixed",
        reason=reason,
        retry_after_s=RETRY_AFTER_S,
        **details,
    )


def _lmdb_text(exc: lmdb.Error | OSError) -> str:
    """LMDB's own words ('mdb_txn_commit: Input/output error' -> 'Input/output error')."""
    reason = exc.strerror if isinstance(exc, OSError) else getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)
