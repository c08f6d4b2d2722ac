"""`dtq worker --processes N`: N worker processes under one supervisor.

CPU-bound Python handlers need processes, not threads (the GIL). The supervisor starts N
children (`dtq worker` with the same flags, less `--processes`), restarts one that dies (after
0.5 s, 1 s, 2 s ... up to 30 s; a child that ran for a minute starts the count again; a slot
that dies `max_restarts` times in a row makes the supervisor give up, stop the others and exit
1), and passes SIGTERM / SIGINT on to the children: they drain (finish running tasks, hand
back the rest) and the supervisor exits once all have. A second signal is passed on too (the
children then stop at once); a child still running `stop_timeout_s` (120 s) after the first
signal is killed.

Children run in their own process group, so a Ctrl+C on the terminal reaches them once,
through the supervisor, not twice; and they get SIGTERM if the supervisor itself dies
(Linux `PR_SET_PDEATHSIG`), so a `kill -9` of the supervisor leaves no orphans working.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog
import trio

__all__ = ["RestartPolicy", "supervise"]

log = structlog.get_logger("dtq.supervisor")

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a dead child is started again."""

    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    healthy_after_s: float = 60.0  # a child that ran this long resets its slot's count
    max_restarts: int = 10  # in a row, without a healthy run between: then give up

    def delay_s(self, failures: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2 ** max(0, failures - 1))


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (Linux; else nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class _Supervisor:
    def __init__(
        self, command_for: Callable[[int], Sequence[str]], env: dict[str, str] | None,
        policy: RestartPolicy, stop_timeout_s: float,
    ) -> None:  # fmt: skip
        self.command_for = command_for
        self.env = env
        self.policy = policy
        self.stop_timeout_s = stop_timeout_s
        self.children: dict[int, trio.Process] = {}
        self.stopping = trio.Event()
        self.gave_up = False
        self.exit_codes: dict[int, int] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, processes: int) -> int:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_signals)
            async with trio.open_nursery() as slots:
                for slot in range(processes):
                    slots.start_soon(self._slot, slot)
            nursery.cancel_scope.cancel()  # every slot is done: stop watching signals
        if self.gave_up:
            return 1
        return 0 if all(code == 0 for code in self.exit_codes.values()) else 1

    async def _slot(self, slot: int) -> None:
        failures = 0
        while not self.stopping.is_set():
            started = trio.current_time()
            proc = await trio.lowlevel.open_process(
                list(self.command_for(slot)), env=self.env, stdin=subprocess.DEVNULL,
                process_group=0, preexec_fn=_die_with_parent,
            )  # fmt: skip
            self.children[slot] = proc
            log.info("worker process started", slot=slot, pid=proc.pid)
            code = await proc.wait()
            del self.children[slot]
            self.exit_codes[slot] = code
            if self.stopping.is_set():
                log.info("worker process stopped", slot=slot, pid=proc.pid, exit_code=code)
                return
            if trio.current_time() - started >= self.policy.healthy_after_s:
                failures = 0
            failures += 1
            if failures > self.policy.max_restarts:
                log.error("worker process keeps dying; giving up", slot=slot,
                          exit_code=code, restarts=failures - 1)  # fmt: skip
                self.gave_up = True
                self._stop(signal.SIGTERM)
                return
            delay = self.policy.delay_s(failures)
            log.warning("worker process died; restarting", slot=slot, pid=proc.pid,
                        exit_code=code, restart_in_s=delay)  # fmt: skip
            with trio.move_on_after(delay):
                await self.stopping.wait()

    def _stop(self, signum: int) -> None:
        if not self.stopping.is_set() and self._nursery is not None:
            self._nursery.start_soon(self._kill_after)
        self.stopping.set()
        for proc in list(self.children.values()):
            if proc.returncode is None:
                proc.send_signal(signum)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                first = not self.stopping.is_set()
                log.info("stopping worker processes" if first else "stopping them now",
                         signal=name, children=len(self.children))  # fmt: skip
                self._stop(signum)

    async def _kill_after(self) -> None:
        await trio.sleep(self.stop_timeout_s)
        for slot, proc in list(self.children.items()):
            if proc.returncode is None:
                log.warning("worker process did not stop in time; killed", slot=slot,
                            pid=proc.pid)  # fmt: skip
                proc.kill()


def supervise(
    command_for: Callable[[int], Sequence[str]],
    processes: int,
    *,
    env: dict[str, str] | None = None,
    policy: RestartPolicy | None = None,
    stop_timeout_s: float = 120.0,
) -> int:
    """Run `processes` children (`command_for(slot)` is a child's argv) until a signal stops
    them; the exit status is 0 when every child stopped cleanly."""
    if processes < 1:
        raise ValueError("--processes must be at least 1")
    sup = _Supervisor(command_for, env, policy or RestartPolicy(), stop_timeout_s)
    return trio.run(sup.run, processes)
