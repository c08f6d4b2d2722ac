"""The write-ahead log of the LMDB backend: the durability point of a group commit.

LMDB's own durable commit writes every dirty page of the 13 B-trees a task create touches and
syncs twice (~0.6 ms on a virtio disk). With the log, a commit appends ONE record (the batch's
puts and deletes) to a preallocated file and syncs once (~0.2 ms); LMDB itself commits without
syncing, and a checkpoint (`dtq.storage.lmdb.checkpoints`) syncs it now and then.

Files, in `<data dir>/wal/`:

    lock         held (flock) by the one process whose writer appends to the log
    segment-0/1  records; the writer appends to one, a checkpoint switches it to the other
    checkpoint   the last synced LMDB snapshot: its txn id, its meta pages, the last record in it

A record: magic u32 | payload length u32 | crc32 u32 | generation u64 | number u64 | payload.
Numbers go up by one per committed batch, across segments and restarts. A reader takes the
records of one generation (one opening of the log) with consecutive numbers and stops at the
first that is torn, stale or missing, so the zeros and old records after the tail never count.

This module knows files, not LMDB.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "Checkpoint",
    "LogBusy",
    "WriteAheadLog",
    "boot_id",
    "read_checkpoint",
    "read_records",
    "write_checkpoint",
]

# A segment is preallocated (a sync after an append that grows a file also writes metadata,
# and on ext4 waits for its journal) and grows in steps; a checkpoint is due once the current one holds CHECKPOINT_BYTES.
SEGMENT_START_BYTES = 256 << 10  # small: every store opened (a test, a CLI call) makes two
SEGMENT_STEP_BYTES = 1 << 20
CHECKPOINT_BYTES = 4 << 20
_RECORD = struct.Struct("<IIIQQ")  # magic, payload length, crc32, generation, number
_RECORD_MAGIC = 0x4C515444  # "DTQL"
# magic, version, generation, txn id, number, boot, psize, fingerprint length
_CHECKPOINT = struct.Struct("<8sIQQQ40sII")
_CHECKPOINT_MAGIC = b"dtq-ckpt"
_CHECKPOINT_VERSION = 1


class LogBusy(Exception):
    """Another process holds the log: this one must commit through LMDB's own sync."""


def boot_id() -> str:
    """This boot of the machine (Linux), or "" where unknown. A process crash keeps the page
    cache, so LMDB's unsynced commits survive it; only a new boot can have lost them."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    generation: int  # the opening of the log whose records follow this snapshot
    txn_id: int  # LMDB's id of the synced snapshot
    number: int  # the last record the snapshot holds
    boot: str  # boot_id() when it was written
    meta_pages: bytes  # LMDB's two meta pages as they were on disk for that snapshot
    fingerprint: bytes = b""  # a page of the snapshot: recognises its data file after a reboot


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(directory: str, ckpt: Checkpoint) -> None:
    """Replace the checkpoint file atomically and durably (write, sync, rename, sync dir)."""
    boot = ckpt.boot.encode()[:40]
    psize = len(ckpt.meta_pages) // 2
    head = _CHECKPOINT.pack(
        _CHECKPOINT_MAGIC,
        _CHECKPOINT_VERSION,
        ckpt.generation,
        ckpt.txn_id,
        ckpt.number,
        boot,
        psize,
        len(ckpt.fingerprint),
    )
    body = head + ckpt.meta_pages + ckpt.fingerprint
    body += struct.pack("<I", zlib.crc32(body))
    final = os.path.join(directory, "checkpoint")
    tmp = final + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(directory)


def read_checkpoint(directory: str) -> Checkpoint | None:
    """The checkpoint file, or None if there is none (a data directory the log never had).

    A damaged one raises ValueError: it is only ever replaced by rename, so damage is not a
    crash's doing, and starting without it could hide lost writes.
    """
    try:
        with open(os.path.join(directory, "checkpoint"), "rb") as fh:
            body = fh.read()
    except FileNotFoundError:
        return None
    if len(body) < _CHECKPOINT.size + 4:
        raise ValueError("the WAL checkpoint file is truncated")
    (crc,) = struct.unpack_from("<I", body, len(body) - 4)
    if zlib.crc32(body[:-4]) != crc:
        raise ValueError("the WAL checkpoint file fails its checksum")
    magic, version, generation, txn_id, number, boot, psize, printed = _CHECKPOINT.unpack_from(body)
    if magic != _CHECKPOINT_MAGIC or version != _CHECKPOINT_VERSION:
        raise ValueError("the WAL checkpoint file is of an unknown format")
    rest = body[_CHECKPOINT.size : -4]
    if len(rest) != 2 * psize + printed:
        raise ValueError("the WAL checkpoint file is truncated")
    pages, fingerprint = rest[: 2 * psize], rest[2 * psize :]
    return Checkpoint(generation, txn_id, number, boot.rstrip(b"\0").decode(), pages, fingerprint)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite all of `data` (a short write, on a copy-on-write filesystem short of space, is
    retried, and a write that takes nothing raises ENOSPC)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written


def _segment_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"segment-{index}")


def read_records(directory: str, generation: int, after: int) -> Iterator[tuple[int, bytes]]:
    """The records numbered `after + 1`, `after + 2`, ... of `generation`, from both segments,
    in order, up to the first one missing."""
    found: dict[int, bytes] = {}
    for index in (0, 1):
        try:
            with open(_segment_path(directory, index), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            continue
        found.update(_scan(data, generation))
    number = after + 1
    while number in found:
        yield number, found.pop(number)
        number += 1


def _scan(data: bytes, generation: int) -> dict[int, bytes]:
    """The intact run of `generation`'s records from the start of one segment."""
    records: dict[int, bytes] = {}
    offset = 0
    previous: int | None = None
    while offset + _RECORD.size <= len(data):
        magic, length, crc, gen, number = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        if magic != _RECORD_MAGIC or gen != generation or start + length > len(data):
            break
        if previous is not None and number != previous + 1:
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            break  # torn: written, never synced
        records[number] = payload
        previous = number
        offset = start + length
    return records


class WriteAheadLog:
    """The appending side: one process at a time (`lock`), one append at a time (the writer)."""

    def __init__(self, directory: str, *, sync: bool = True) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._sync = sync  # False (durability "os"): a record survives a crash, not power loss
        self._lock_fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise LogBusy(directory) from None
        self._fds: list[int] = []
        self._allocated: list[int] = []
        self.generation = 0
        self._current = 0
        self.offset = 0  # where the next record goes in the current segment
        self._last_start = 0

    def start(self, generation: int | None = None) -> None:
        """Begin a generation (after recovery, before its first checkpoint, which switches
        the appends to a segment's start). Makes and preallocates the segments on first use."""
        if not self._fds:
            for index in (0, 1):
                fd = os.open(_segment_path(self.directory, index), os.O_RDWR | os.O_CREAT, 0o600)
                self._fds.append(fd)
                self._allocated.append(os.fstat(fd).st_size)
                # A full disk: reads go on; the first append reports it (a 503).
                with contextlib.suppress(OSError):
                    self._allocate(index, SEGMENT_START_BYTES)
            _fsync_dir(self.directory)
        self.generation = secrets.randbits(63) if generation is None else generation
        self._current = 0
        self.offset = 0

    def append(self, number: int, payload: bytes) -> None:
        """Write one record and sync it: when this returns, the record survives power loss
        (without `sync`: a crash of the process)."""
        fd = self._fds[self._current]
        head = _RECORD.pack(
            _RECORD_MAGIC, len(payload), zlib.crc32(payload), self.generation, number
        )
        end = self.offset + len(head) + len(payload)
        if end > self._allocated[self._current]:
            self._allocate(self._current, end + SEGMENT_STEP_BYTES)
        _write_all(fd, head + payload, self.offset)
        if self._sync:
            os.fdatasync(fd)
        self._last_start = self.offset
        self.offset += len(head) + len(payload)

    def _allocate(self, index: int, size: int) -> None:
        if size <= self._allocated[index]:
            return
        # Zeros written, not fallocate's unwritten extents: the first sync over those would
        # commit ext4's journal, and that waits for every other file's pending writes.
        fd, start = self._fds[index], self._allocated[index]
        zeros = bytes(min(size - start, SEGMENT_STEP_BYTES))
        while start < size:
            start += os.pwrite(fd, zeros[: size - start], start)
        os.fsync(fd)
        self._allocated[index] = size

    def unappend(self) -> None:
        """Undo the last append (its batch did not commit): zero its header, so a reader
        stops before it, and write the next record in its place."""
        fd = self._fds[self._current]
        _write_all(fd, bytes(_RECORD.size), self._last_start)
        if self._sync:
            os.fdatasync(fd)
        self.offset = self._last_start

    def switch(self) -> None:
        """Append to the other segment from its start (a checkpoint begins: the records it
        will cover stay where they are until it is written)."""
        self._current = 1 - self._current
        self.offset = 0

    @property
    def checkpoint_due(self) -> bool:
        return self.offset >= CHECKPOINT_BYTES

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        os.close(self._lock_fd)  # releases the lock
