"""Checkpoints: the LMDB snapshot the write-ahead log's records follow, synced and kept intact.

LMDB commits without syncing while the log is the durability point. After a power cut the
newest meta page on disk may then name pages that never reached it. So a checkpoint:

1. under LMDB's write lock (no process commits meanwhile), copies the two meta pages as they
   are and opens a read transaction on that snapshot (the pin);
2. syncs the data file: the snapshot's pages were all written before, so now they are on disk;
3. records the copied meta pages, the snapshot's txn id and the last log record it holds in
   the checkpoint file.

While the pin is open LMDB reuses no page of the snapshot, so it stays intact on disk until
the next checkpoint moves the pin. After a power cut (a new boot id), writing the copied meta
pages back makes LMDB open at that snapshot, and the log's later records replay on top.

The checkpoint file only moves forward: a command-line tool that writes while a server holds
the log records a checkpoint after each of its (synced) commits, which the server's own
checkpoints then never move back past.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import lmdb

from dtq.storage.lmdb import wal
from dtq.storage.lmdb.wal import Checkpoint

__all__ = ["Checkpointer", "Snapshot", "rewind_to"]

_META_MAGIC = 0xBEEFC0DE
_META_MAGIC_AT = 16  # after the page header
_META_TXNID_AT = 144  # LMDB 0.9, 64-bit: the last field of MDB_meta
_META_MAIN_ROOT_AT = 128  # mm_dbs[MAIN_DBI].md_root (the tree naming every sub-database)
_NO_PAGE = 0xFFFFFFFFFFFFFFFF


_U64 = struct.Struct("<Q")


def _txn_id_of(meta_pages: bytes, psize: int) -> int:
    """The snapshot two meta pages open at (LMDB takes the newer one), checking their format."""
    for page in (meta_pages[:psize], meta_pages[psize:]):
        (magic,) = struct.unpack_from("<I", page, _META_MAGIC_AT)
        if magic != _META_MAGIC:
            raise ValueError("not an LMDB 0.9 meta page")
    return _U64.unpack_from(_newest(meta_pages, psize), _META_TXNID_AT)[0]


def _newest(meta_pages: bytes, psize: int) -> bytes:
    """The meta page LMDB opens at (the higher txn id)."""
    first, second = meta_pages[:psize], meta_pages[psize:]
    newer = (
        _U64.unpack_from(first, _META_TXNID_AT)[0] >= _U64.unpack_from(second, _META_TXNID_AT)[0]
    )
    return first if newer else second


def _fingerprint(fd: int, meta_pages: bytes, psize: int, table: bytes) -> bytes:
    """The snapshot's main root page and the root page of `table` (the sub-database holding
    the log's generation, random per log) as the file holds them; b"" for an empty tree.
    They stay as they are while the snapshot is pinned, and only a file the snapshot came
    from holds them: two stores built alike can share a main root page, not a generation."""
    (root,) = _U64.unpack_from(_newest(meta_pages, psize), _META_MAIN_ROOT_AT)
    if root == _NO_PAGE:
        return b""
    main = os.pread(fd, psize, root * psize)
    table_root = _sub_database_root(main, table)
    return main if table_root is None else main + os.pread(fd, psize, table_root * psize)


_P_LEAF = 0x02
_NODE = struct.Struct("<HHHH")  # mn_lo, mn_hi, mn_flags, mn_ksize; then the key, the data


def _sub_database_root(page: bytes, name: bytes) -> int | None:
    """The root page of sub-database `name`, from a leaf page of the main tree (LMDB 0.9:
    a 16-byte page header, then 2-byte node offsets up to `lower`); None if not found."""
    (flags, lower) = struct.unpack_from("<HH", page, 10)
    if not flags & _P_LEAF:
        return None  # (so many sub-databases that the main tree has branches)
    for i in range((min(lower, len(page)) - 16) // 2):
        (at,) = struct.unpack_from("<H", page, 16 + 2 * i)
        if at + _NODE.size > len(page):
            return None
        *_, key_size = _NODE.unpack_from(page, at)
        key_at = at + _NODE.size
        if page[key_at : key_at + key_size] == name:
            data_at = key_at + key_size
            if data_at + 48 > len(page):
                return None
            (root,) = _U64.unpack_from(page, data_at + 40)  # MDB_db.md_root
            return None if root == _NO_PAGE else int(root)
    return None


def rewind_to(data_file: str, ckpt: Checkpoint, table: bytes) -> bool:
    """Make the LMDB data file open at the checkpoint's snapshot (call before opening it).

    False, touching nothing, when the file cannot have come from that snapshot (another file
    was put there): its meta pages are older than the checkpoint (LMDB's txn ids only grow),
    or its pages where the snapshot's main and meta roots were differ from those recorded.
    """
    psize = len(ckpt.meta_pages) // 2
    fd = os.open(data_file, os.O_RDWR)
    try:
        try:
            current = _txn_id_of(os.pread(fd, 2 * psize, 0), psize)
        except (ValueError, struct.error):
            current = ckpt.txn_id  # torn meta pages: the copies are the only way back
        if current < ckpt.txn_id:
            return False
        if ckpt.fingerprint:
            try:
                printed = _fingerprint(fd, ckpt.meta_pages, psize, table)
            except struct.error:  # (pages that are not LMDB's where the roots were)
                return False
            if printed != ckpt.fingerprint:
                return False
        os.pwrite(fd, ckpt.meta_pages, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


@dataclass(slots=True)
class Snapshot:
    pin: lmdb.Transaction  # the read transaction that keeps the snapshot's pages
    txn_id: int
    number: int  # the last log record in it
    meta_pages: bytes
    fingerprint: bytes


class Checkpointer:
    """Takes and records checkpoints of one environment; holds the pin of the last one."""

    def __init__(
        self,
        env: lmdb.Environment,
        data_file: str,
        log_dir: str,
        number_key: bytes,
        meta: Any,
        meta_name: bytes,
    ) -> None:
        self._env = env
        self._fd = os.open(data_file, os.O_RDONLY)
        self._log_dir = log_dir
        self._number_key = number_key  # where each commit stores its record's number
        self._meta = meta  # ... in this table
        self._meta_name = meta_name  # (its name)
        self._psize = int(env.stat()["psize"])
        self.held: Snapshot | None = None  # the last recorded checkpoint's pin

    def take(self) -> Snapshot:
        """Copy the meta pages and pin the newest snapshot. Call with no write transaction of
        this process open; begins and ends one (so: in one thread)."""
        lock = self._env.begin(write=True)  # keeps other processes from committing meanwhile
        try:
            pages = os.pread(self._fd, 2 * self._psize, 0)
            pin = self._env.begin()
        finally:
            lock.abort()
        txn_id = _txn_id_of(pages, self._psize)
        if txn_id != pin.id():
            pin.abort()
            raise RuntimeError(f"meta pages at txn {txn_id}, snapshot at {pin.id()}")
        raw = pin.get(self._number_key, db=self._meta)
        number = 0 if raw is None else int.from_bytes(raw, "big")
        printed = _fingerprint(self._fd, pages, self._psize, self._meta_name)
        return Snapshot(pin, txn_id, number, pages, printed)

    def record(self, snap: Snapshot, generation: int | None) -> bool:
        """Sync the data file, then write the checkpoint file unless a newer one is there.
        Blocking (a thread's job). `generation`: the log's; None keeps the file's (a tool
        writing beside a server). Returns whether the file now names `snap`."""
        flush_gently(self._fd)
        lock_fd = os.open(os.path.join(self._log_dir, "checkpoint.lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = wal.read_checkpoint(self._log_dir)
            if current is not None and current.txn_id >= snap.txn_id:
                return False
            if generation is None:
                if current is None:
                    return False  # no log to follow this snapshot: LMDB's own sync suffices
                generation = current.generation
            ckpt = Checkpoint(generation, snap.txn_id, snap.number, wal.boot_id(),
                              snap.meta_pages, snap.fingerprint)  # fmt: skip
            wal.write_checkpoint(self._log_dir, ckpt)
            return True
        finally:
            os.close(lock_fd)  # releases the lock

    def hold(self, snap: Snapshot) -> None:
        """Keep `snap` pinned instead of the one before (which may now be reused)."""
        before, self.held = self.held, snap
        if before is not None:
            _end(before.pin)

    def release(self) -> None:
        if self.held is not None:
            _end(self.held.pin)
            self.held = None

    def close(self) -> None:
        self.release()
        os.close(self._fd)


_FLUSH_CHUNK_BYTES = 256 << 10
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4  # sync_file_range(2) flags


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], fn)


_range_sync = _sync_file_range()


def flush_gently(fd: int) -> None:
    """fdatasync, but written out a chunk at a time first: a checkpoint may have a second's
    worth of commits' pages to write, and the log's own small syncs, queued behind one big
    flush, would wait for all of it (ctypes releases the GIL meanwhile)."""
    if _range_sync is not None:
        size = os.fstat(fd).st_size
        for start in range(0, size, _FLUSH_CHUNK_BYTES):
            if _range_sync(fd, start, _FLUSH_CHUNK_BYTES, _WAIT_BEFORE | _WRITE | _WAIT_AFTER):
                break  # an error: the fdatasync below reports it
    os.fdatasync(fd)


def _end(pin: lmdb.Transaction) -> None:
    with contextlib.suppress(lmdb.Error):  # already ended: growing the map ends them all
        pin.abort()
