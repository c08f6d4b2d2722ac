"""Child process for test_write_ahead_log.py (not a test module).

    python wal_child.py DATA_DIR cut-short [os] writes `before`, then dies (SIGKILL) right after
                                                `cut`'s log record is written, before LMDB commits
                                                (`os`: with durability "os")
    python wal_child.py DATA_DIR power-cut N B writes N settings, checkpoints, copies the data
                                                file to DATA_DIR/synced.mdb, writes N more, dies;
                                                values are `value(name, B)`, the map starts at
                                                256 kB (B = 4000: it grows after the checkpoint)
    python wal_child.py DATA_DIR hold          opens the store (holding the log), writes
                                                `holder`, prints "ready", waits for stdin to close
    python wal_child.py DATA_DIR beside        opens the same data directory beside a holder,
                                                writes `beside`, prints whether it holds the log

Every write is printed ("acked NAME") once `Store.write` has returned.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Any

import trio

from dtq.storage.base import StoreTxn
from dtq.storage.lmdb import checkpoints, wal
from dtq.storage.lmdb.store import LmdbStore


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _copy_the_data_file_at_each_checkpoint(store: LmdbStore, path: str) -> None:
    """DATA_DIR/synced.mdb: the data file as the last checkpoint left it on disk (its
    snapshot's pages do not change after it). Only the checkpoints this child asks for, and the
    one growing the map makes, are taken: none runs in the background when it dies."""
    store.writer.checkpoint_interval_s = 3600.0
    wal.CHECKPOINT_BYTES = 1 << 40
    real_record = checkpoints.Checkpointer.record

    def record_and_copy(self: checkpoints.Checkpointer, snap: Any, generation: Any) -> bool:
        recorded = real_record(self, snap, generation)
        if recorded:
            shutil.copyfile(os.path.join(path, "data.mdb"), os.path.join(path, "synced.mdb"))
        return recorded

    checkpoints.Checkpointer.record = record_and_copy  # type: ignore[method-assign]


async def _put(store: LmdbStore, name: str, value: str = "1") -> None:
    def op(txn: StoreTxn) -> None:
        txn.put_setting(name, value)

    await store.write(op)
    print(f"acked {name}", flush=True)


def value(name: str, size: int) -> str:
    """The value power-cut writes under `name`."""
    return name[0] * (int(name.rsplit("-", 1)[1]) * 37 % size)


async def main(path: str, mode: str, arg: str | None, size: str | None) -> None:
    map_size = 256 << 10 if mode == "power-cut" else 8 << 20
    store = LmdbStore(path, fsync=arg != "os", map_size_bytes=map_size)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        if mode == "cut-short":
            await _put(store, "before")
            real_append = wal.WriteAheadLog.append

            def append_then_die(self: wal.WriteAheadLog, number: int, payload: bytes) -> None:
                real_append(self, number, payload)
                _die()

            wal.WriteAheadLog.append = append_then_die  # type: ignore[method-assign]
            await _put(store, "cut", "short")
        elif mode == "power-cut":
            _copy_the_data_file_at_each_checkpoint(store, path)
            n, b = int(arg or "50"), int(size or "900")
            for i in range(n):
                await _put(store, f"early-{i}", value(f"early-{i}", b))
            assert store.log is not None
            store.log.checkpoint_now()
            for i in range(n):
                await _put(store, f"late-{i}", value(f"late-{i}", b))
            _die()
        elif mode == "hold":
            await _put(store, "holder")
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)
        elif mode == "beside":
            print("holds the log" if store.log is not None else "beside the log", flush=True)
            await _put(store, "beside")
        nursery.cancel_scope.cancel()
    await store.aclose()
    store.close()


if __name__ == "__main__":
    args = [*sys.argv[3:5], None, None][:2]
    trio.run(main, sys.argv[1], sys.argv[2], *args)
