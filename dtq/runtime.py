"""Opens the core: storage, writer, queue, reaper, in the caller's nursery."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from dtq.clock import Clock, TrioClock
from dtq.queue import TaskQueue, run_reaper
from dtq.settings import Durability, Settings
from dtq.storage.lmdb_store import LmdbStore
from dtq.storage.writer import GroupCommitWriter


@asynccontextmanager
async def open_queue(
    settings: Settings,
    *,
    clock: Clock | None = None,
    on_open: Callable[[TaskQueue], None] | None = None,
) -> AsyncIterator[TaskQueue]:
    """The running core. On exit: long-polls answer, queued writes are flushed, LMDB closes.

    `on_open(queue)` runs before the writer takes its first write (e.g. to install a store
    hook that must see every change).
    """
    clock = clock or TrioClock()
    store = LmdbStore(
        settings.data_dir,
        fsync=settings.durability == Durability.FSYNC,
        map_size_bytes=settings.map_size_bytes,
    )
    try:
        writer = GroupCommitWriter(store, clock)
        queue = TaskQueue(store, writer, clock, settings)
        queue.rebuild()
        if on_open is not None:
            on_open(queue)
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await queue.grant_restart_grace()
            await nursery.start(run_reaper, queue)
            try:
                yield queue
            finally:
                queue.begin_shutdown()
                with trio.CancelScope(shield=True):
                    await writer.aclose()  # flushes what is queued, then stops
                nursery.cancel_scope.cancel()  # the reaper
    finally:
        store.close()


@asynccontextmanager
async def open_writer(settings: Settings) -> AsyncIterator[tuple[LmdbStore, GroupCommitWriter]]:
    """Storage and its writer only (no reaper, no dispatcher): for command-line tools that
    change users or keys, safely even while a server runs on the same data directory."""
    store = LmdbStore(
        settings.data_dir,
        fsync=settings.durability == Durability.FSYNC,
        map_size_bytes=settings.map_size_bytes,
    )
    try:
        writer = GroupCommitWriter(store, TrioClock())
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            try:
                yield store, writer
            finally:
                with trio.CancelScope(shield=True):
                    await writer.aclose()
    finally:
        store.close()
