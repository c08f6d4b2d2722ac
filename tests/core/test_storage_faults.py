"""Storage failures read as what they are (issue 8, finding 8): each errno -> reason + message,
and the writer fails only the batch, says Retry-After, and writes again once the disk does."""

from __future__ import annotations

import errno
import os

import lmdb
import pytest

from dtq.core.service import TaskQueue
from dtq.errors import StorageError
from dtq.storage.faults import RETRY_AFTER_S, write_failure
from dtq.storage.lmdb.store import LmdbTxn

from .conftest import all_tasks, create

PATH = "/var/lib/dtq"


def lmdb_error(cls: type[lmdb.Error], what: str, code: int) -> lmdb.Error:
    """An error shaped as py-lmdb raises it (its C extension sets `code` and `reason`)."""
    exc = cls(f"{what}: {os.strerror(code)}")
    exc.what, exc.code, exc.reason = what, code, os.strerror(code)  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("cls", "code", "reason", "words"),
    [
        (lmdb.DiskError, errno.ENOSPC, "disk_full", "no space left on device"),
        (lmdb.Error, errno.EDQUOT, "disk_full", "disk quota exceeded"),
        (lmdb.Error, errno.EFBIG, "disk_full", "file too large"),
        # LMDB turns a short write, what a full filesystem gives, into EIO.
        (lmdb.Error, errno.EIO, "storage_unwritable", "the disk is full or failing"),
        (lmdb.Error, errno.EROFS, "storage_unwritable", "read-only file system"),
        (lmdb.ReadonlyError, errno.EACCES, "storage_unwritable", "permission denied"),
    ],
)
def test_each_errno_names_the_cause_and_the_data_dir(
    cls: type[lmdb.Error], code: int, reason: str, words: str
) -> None:
    err = write_failure(lmdb_error(cls, "mdb_txn_commit", code), PATH)
    assert isinstance(err, StorageError)
    assert (err.status, err.code) == (503, "SERVICE_UNAVAILABLE")
    assert err.message.startswith(f"disk full or unwritable: {PATH} (")
    assert words in err.message
    assert err.details == {"reason": reason, "path": PATH, "errno": errno.errorcode[code]}
    assert err.retry_after_s == RETRY_AFTER_S


def test_a_map_that_cannot_grow() -> None:
    err = write_failure(lmdb_error(lmdb.MemoryError, "mdb_env_set_mapsize", errno.ENOMEM), PATH,
                        growing=True)  # fmt: skip
    assert err.message.startswith(f"disk full or unwritable: {PATH} (the database cannot grow")
    assert err.details["reason"] == "storage_full"
    assert err.retry_after_s == RETRY_AFTER_S


def test_other_lmdb_errors_say_what_lmdb_said() -> None:
    err = write_failure(lmdb.BadValsizeError("mdb_put: MDB_BAD_VALSIZE"), PATH)
    assert err.message.startswith(f"storage write failed at {PATH} (mdb_put: MDB_BAD_VALSIZE)")
    assert err.details == {"reason": "storage_error", "path": PATH}
    assert err.retry_after_s == RETRY_AFTER_S


async def test_disk_full_fails_the_batch_then_writes_work_again(q: TaskQueue) -> None:
    before = await create(q, "before")

    def disk_full(tx: LmdbTxn) -> None:
        raise lmdb_error(lmdb.DiskError, "mdb_txn_commit", errno.ENOSPC)

    with pytest.raises(StorageError) as info:
        await q.store.write(disk_full)
    assert info.value.details["reason"] == "disk_full"
    assert info.value.details["path"] == q.store.path
    after = await create(q, "after")  # no restart
    assert {t.id for t in await all_tasks(q)} == {before.id, after.id}


async def test_a_map_that_cannot_grow_fails_the_batch_not_the_writer(
    q: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    def map_full(tx: LmdbTxn) -> None:
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")

    def cannot_grow() -> int:
        raise lmdb_error(lmdb.MemoryError, "mdb_env_set_mapsize", errno.ENOMEM)

    monkeypatch.setattr(q.store, "grow", cannot_grow)
    with pytest.raises(StorageError) as info:
        await q.store.write(map_full)
    assert info.value.details["reason"] == "storage_full"
    monkeypatch.undo()
    task = await create(q, "after")
    assert [t.id for t in await all_tasks(q)] == [task.id]
