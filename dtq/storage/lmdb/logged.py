"""Durable commits through the write-ahead log, for an LMDB store.

With durability "fsync" each record is synced; with "os" it is only written (it survives a
crash of the process), but checkpoints and recovery are the same, so even then a power cut
costs about the last second of writes, never the environment's integrity.

`CommitLog` is the process that holds the log (the server): it recovers at open, appends one
record per commit, and checkpoints. `BesideTheLog` is a process that opens the same data
directory while another holds the log (`dtq users` / `dtq keys` beside a running server): it
commits with LMDB's own sync and records a checkpoint after each commit, so a recovery after
power loss never rewinds past it.

Recovery at open: after a new boot the data file is rewound to the checkpoint (its unsynced
commits may be torn); the records after what LMDB holds are then replayed in one transaction.
After a mere process crash the data file is intact (the page cache outlives the process) and
at most the one record whose commit was cut short replays.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import lmdb
import structlog

from dtq.storage.lmdb import wal
from dtq.storage.lmdb.checkpoints import Checkpointer, Snapshot, rewind_to
from dtq.storage.lmdb.redo import RecordingTxn, decode_changes, encode_changes, replay
from dtq.storage.lmdb.wal import LogBusy, WriteAheadLog

__all__ = ["NUMBER_KEY", "BesideTheLog", "CommitLog", "LogBusy"]

log = structlog.get_logger("dtq.storage")

NUMBER_KEY = b"wal_number"  # in `meta`: the last log record the data file holds
GENERATION_KEY = b"wal_generation"  # in `meta`: the log generation the data file follows
META_TABLE = b"meta"  # the sub-database both keys are in
CHECKPOINT_INTERVAL_S = 1.0  # the writer checkpoints at most this long after a commit


def _log_dir(path: str) -> str:
    return os.path.join(path, "wal")


def _data_file(path: str) -> str:
    return os.path.join(path, "data.mdb")


class CommitLog:
    def __init__(self, path: str, *, sync: bool = True) -> None:
        self._path = path
        self.wal = WriteAheadLog(_log_dir(path), sync=sync)  # raises LogBusy
        self._ckpt = wal.read_checkpoint(self.wal.directory)
        self.number = 0  # the last record committed
        self.checkpointer: Checkpointer | None = None
        self._checkpointed_number = 0
        # Whether the last checkpoint was recorded: only then may appends go back to the other
        # segment (whose records it covers).
        self._may_switch = True
        self._opened_pin: lmdb.Transaction | None = None
        self.pin_lost = False  # the map grew (ending every transaction): checkpoint first

    def rewind_if_power_was_lost(self) -> None:
        """Before LMDB opens: after a new boot, go back to the synced snapshot."""
        ckpt = self._ckpt
        if ckpt is None or not os.path.exists(_data_file(self._path)):
            return
        if ckpt.boot and ckpt.boot == wal.boot_id():
            return  # same boot: every commit reached the page cache, and the disk keeps it
        if not rewind_to(_data_file(self._path), ckpt, META_TABLE):
            log.warning("the data file is not the one the write-ahead log's checkpoint was "
                        "taken from: it is not rewound")  # fmt: skip
            return
        log.warning(
            "the machine restarted since the last checkpoint: data file rewound to it, the "
            "write-ahead log replays from there",
            txn_id=ckpt.txn_id,
            record=ckpt.number,
        )

    def opened(self, env: lmdb.Environment) -> None:
        """Right after LMDB opens, before any write: pin the snapshot it opened at. After a
        rewind that is the checkpoint's, and until a new checkpoint is recorded a second power
        cut must find it intact too (the replay and the migrations must not reuse its pages)."""
        self._opened_pin = env.begin()

    def recover(self, txn: lmdb.Transaction, tables: Sequence[Any], meta: Any) -> int:
        """Replay the records after what the data file holds; returns how many."""
        raw = txn.get(NUMBER_KEY, db=meta)
        self.number = 0 if raw is None else int.from_bytes(raw, "big")
        if self._ckpt is None:
            return 0
        raw = txn.get(GENERATION_KEY, db=meta)
        if raw is not None and int.from_bytes(raw, "big") != self._ckpt.generation:
            # Another data file than the log's (a copy put in its place): the records do not
            # follow it. A restored copy of this very file does match, and replays forward.
            log.warning("the data file does not follow this write-ahead log: not replayed")
            return 0
        replayed = 0
        for number, payload in wal.read_records(
            self.wal.directory, self._ckpt.generation, self.number
        ):
            replay(txn, tables, decode_changes(payload))
            self.number = number
            replayed += 1
        if replayed:
            log.info("write-ahead log replayed", records=replayed, last=self.number)
        return replayed

    def start(self, env: lmdb.Environment, meta: Any) -> None:
        """After recovery: a new generation, starting from a synced checkpoint."""
        self.checkpointer = Checkpointer(
            env, _data_file(self._path), self.wal.directory, NUMBER_KEY, meta, META_TABLE
        )
        self.wal.start()
        with env.begin(write=True) as txn:  # the data file says which log it follows
            txn.put(GENERATION_KEY, self.wal.generation.to_bytes(8, "big"), db=meta)
        self.checkpoint_now()
        self._release_opened_pin()

    def _release_opened_pin(self) -> None:
        if self._opened_pin is not None:
            with contextlib.suppress(lmdb.Error):  # growing the map at open ended it already
                self._opened_pin.abort()
            self._opened_pin = None

    # -- commits (the writer's thread, or the trio thread for an inline commit) -------------
    def commit(self, txn: lmdb.Transaction, record: RecordingTxn, meta: Any) -> None:
        """Append the batch's record (`record`: the recording view of `txn`), then commit
        `txn`. The record's number goes into the data file with the batch."""
        number = self.number + 1
        record.put(NUMBER_KEY, number.to_bytes(8, "big"), db=meta)
        self.wal.append(number, encode_changes(record.changes))
        try:
            txn.commit()
        except BaseException:
            self.wal.unappend()
            raise
        self.number = number

    # -- checkpoints ------------------------------------------------------------------------
    @property
    def uncheckpointed(self) -> bool:
        """Whether records were committed since the last checkpoint began."""
        return self.number != self._checkpointed_number

    def begin_checkpoint(self) -> Snapshot:
        """Pin the newest snapshot and send later records to the other segment. No write
        transaction of this process may be open (one thread: it begins and ends one)."""
        assert self.checkpointer is not None
        snap = self.checkpointer.take()
        if self._may_switch:
            self.wal.switch()
        self._may_switch = False
        self._checkpointed_number = snap.number
        return snap

    def finish_checkpoint(self, snap: Snapshot) -> None:
        """Sync and record it (blocking: a thread's job, beside the writer's commits)."""
        assert self.checkpointer is not None
        self.checkpointer.record(snap, self.wal.generation)
        self._may_switch = True

    def checkpoint_failed(self, snap: Snapshot) -> None:
        """Its sync or file failed: the one before stays, and a new one is due soon."""
        snap.pin.abort()
        self._checkpointed_number = -1

    def hold(self, snap: Snapshot) -> None:
        assert self.checkpointer is not None
        self.checkpointer.hold(snap)

    def checkpoint_now(self) -> None:
        """All three steps at once (at open, after the map grew, at close)."""
        snap = self.begin_checkpoint()
        try:
            self.finish_checkpoint(snap)
        except BaseException:
            self.checkpoint_failed(snap)
            raise
        self.hold(snap)
        self.pin_lost = False

    def close(self) -> None:
        self._release_opened_pin()
        try:
            if self.checkpointer is not None:
                try:
                    self.checkpoint_now()  # a clean stop leaves nothing to replay
                finally:
                    self.checkpointer.close()
        finally:
            self.wal.close()

    def abandon(self) -> None:
        """Let go without a checkpoint (the store failed to open)."""
        self._release_opened_pin()
        try:
            if self.checkpointer is not None:
                self.checkpointer.close()
        finally:
            self.wal.close()


class BesideTheLog:
    """Checkpoints after each commit of a process that does not hold the log."""

    def __init__(self, path: str, env: lmdb.Environment, meta: Any) -> None:
        self._checkpointer = Checkpointer(
            env, _data_file(path), _log_dir(path), NUMBER_KEY, meta, META_TABLE
        )

    def committed(self) -> None:
        snap = self._checkpointer.take()
        try:
            self._checkpointer.record(snap, None)
        finally:
            snap.pin.abort()  # the log's holder pins an older snapshot: this one is safe

    def close(self) -> None:
        self._checkpointer.close()
