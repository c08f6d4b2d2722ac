"""A fixed pool of threads for a worker's sync handlers (plain `def`).

    pool = HandlerThreads(8)
    result = await pool.run(handler, payload)   # in trio; cancellable
    pool.close()

`size` threads, started as work comes (an async-only worker starts none), each taking the next
handler call from one queue, so a thread that finishes picks up the next call without a trip
through trio, and a burst of tasks never makes more threads than `size`. A call cancelled
before it starts is skipped. A call cancelled while it runs (its timeout passed, its lease was
lost) is abandoned: Python cannot stop a thread, so the handler runs on, and the pool starts a
replacement thread at once, so abandoned handlers never take capacity from new work; the
thread of an abandoned call ends when the call returns. Threads are daemons: a handler that
never returns does not keep the process alive after the worker stops.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio

__all__ = ["HandlerThreads"]


class _Call:
    __slots__ = ("abandoned", "arg", "context", "fn", "running", "task", "token")

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn = fn
        self.arg = arg
        self.context = contextvars.copy_context()
        self.task = trio.lowlevel.current_task()
        self.token = trio.lowlevel.current_trio_token()
        self.running = False  # a thread has taken it (guarded by the pool's lock)
        self.abandoned = False  # its caller stopped waiting (set on the trio thread)


class HandlerThreads:
    """At most `size` threads run handler calls at once (abandoned calls aside)."""

    def __init__(self, size: int, *, name: str = "dtq-handler") -> None:
        if size < 1:
            raise ValueError("a handler thread pool needs at least one thread")
        self.size = size
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # alive, counting those still running an abandoned call
        # Threads free for a call, less calls queued for one (negative: calls are waiting).
        self._idle = 0
        self._abandoned_running = 0
        self._started = 0
        self._closed = False

    def statistics(self) -> dict[str, int]:
        with self._lock:
            return {"size": self.size, "threads": self._threads, "idle": max(0, self._idle),
                    "abandoned_running": self._abandoned_running,
                    "started": self._started}  # fmt: skip

    async def run(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        """`fn(arg)` on a pool thread; its result, or its exception raised here."""
        if self._closed:
            raise RuntimeError("the handler thread pool is closed")
        call = _Call(fn, arg)
        with self._lock:
            # Start a thread only when no free one will take this call and the pool has room.
            if self._idle <= 0 and self._threads - self._abandoned_running < self.size:
                self._start_thread()
            self._idle -= 1  # a free thread is spoken for, or the call waits for one
        self._calls.put(call)

        def abort(_: Any) -> trio.lowlevel.Abort:
            call.abandoned = True
            with self._lock:
                if call.running:
                    # Its thread is lost to us until the handler returns: replace it.
                    self._abandoned_running += 1
                    if not self._closed and self._idle <= 0:
                        self._start_thread()
            return trio.lowlevel.Abort.SUCCEEDED

        result: Any = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def close(self) -> None:
        """Let every thread end once it is idle (running handlers finish first)."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._calls.put(None)

    # -- the threads -------------------------------------------------------------------------
    def _start_thread(self) -> None:  # with the lock held
        self._threads += 1
        self._idle += 1
        self._started += 1
        thread = threading.Thread(
            target=self._serve, name=f"{self.name}-{self._started}", daemon=True
        )
        thread.start()

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                with self._lock:
                    self._threads -= 1
                return
            with self._lock:
                if call.abandoned:  # cancelled while queued: never started
                    self._idle += 1
                    continue
                call.running = True
            result = outcome.capture(call.context.run, call.fn, call.arg)
            with self._lock:
                call.running = False
                if call.abandoned:
                    # A replacement took this thread's place: this one ends here.
                    self._abandoned_running -= 1
                    self._threads -= 1
                    return
                self._idle += 1
            try:
                call.token.run_sync_soon(_deliver, call, result)
            except trio.RunFinishedError:
                return  # trio has stopped: nobody is waiting for the result


def _deliver(call: _Call, result: outcome.Outcome[Any]) -> None:
    # On the trio thread, as `abort` is: the two never race.
    if not call.abandoned:
        trio.lowlevel.reschedule(call.task, result)
