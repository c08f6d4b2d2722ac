"""Hot backup: a consistent copy of the LMDB environment while the server keeps running."""

from __future__ import annotations

import os
import shutil

import lmdb

from dtq.errors import InvalidRequest, StorageError


def backup(data_dir: str, dest: str) -> int:
    """Copy (compacted) into `dest`; returns the bytes written. A read transaction pins one
    consistent snapshot, so writers are never blocked."""
    if not os.path.exists(os.path.join(data_dir, "data.mdb")):
        raise InvalidRequest(f"no dtq data in {data_dir!r}", field="data_dir")
    if os.path.exists(dest) and os.listdir(dest):
        raise InvalidRequest(f"destination {dest!r} is not empty", field="dest")
    os.makedirs(dest, exist_ok=True)
    try:
        env = lmdb.open(data_dir, readonly=False, max_dbs=32, create=False)
        try:
            env.copy(dest, compact=True)
        finally:
            env.close()
    except lmdb.Error as exc:
        raise StorageError(f"backup failed: {exc}") from exc
    secret = os.path.join(data_dir, "jwt-secret")
    if os.path.exists(secret):
        shutil.copy2(secret, os.path.join(dest, "jwt-secret"))
    return os.path.getsize(os.path.join(dest, "data.mdb"))
