"""Hot backup: a consistent copy of the LMDB environment while the server keeps running."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable

import lmdb

from dtq.errors import InvalidRequest, StorageError


def _copy(env: lmdb.Environment, dest: str, errors: list[lmdb.Error]) -> None:
    try:
        env.copy(dest, compact=True)
    except lmdb.Error as exc:
        errors.append(exc)


def backup(data_dir: str, dest: str, progress: Callable[[int, int], None] | None = None) -> int:
    """Copy (compacted) into `dest`; returns the bytes written. A read transaction pins one
    consistent snapshot, so writers are never blocked. `progress(bytes_written, bytes_in_use)`
    is called a few times a second while the copy runs."""
    if not os.path.exists(os.path.join(data_dir, "data.mdb")):
        raise InvalidRequest(f"no dtq data in {data_dir!r}", field="data_dir")
    if os.path.exists(dest) and os.listdir(dest):
        raise InvalidRequest(f"destination {dest!r} is not empty", field="dest")
    os.makedirs(dest, exist_ok=True)
    errors: list[lmdb.Error] = []
    try:
        env = lmdb.open(data_dir, readonly=False, max_dbs=32, create=False)
        try:
            info, stat = env.info(), env.stat()
            in_use = (info["last_pgno"] + 1) * stat["psize"]
            copier = threading.Thread(target=_copy, args=(env, dest, errors), daemon=True)
            copier.start()
            target = os.path.join(dest, "data.mdb")
            while copier.is_alive():
                copier.join(0.2)
                if progress is not None and os.path.exists(target):
                    progress(min(os.path.getsize(target), in_use), in_use)
            if errors:
                raise errors[0]
            if progress is not None:
                progress(in_use, in_use)
        finally:
            env.close()
    except lmdb.Error as exc:
        raise StorageError(f"backup failed: {exc}") from exc
    secret = os.path.join(data_dir, "jwt-secret")
    if os.path.exists(secret):
        shutil.copy2(secret, os.path.join(dest, "jwt-secret"))
    return os.path.getsize(os.path.join(dest, "data.mdb"))
