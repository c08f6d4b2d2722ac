"""Who holds which task over the fast lane, so a cancellation reaches the worker running it.

A core task listener (called in the writer's commit callbacks: cheap and synchronous): when a
task a connection holds under its lease is cancelled or deleted, that connection gets a
`cancelled` notice at once; any other change that ends the lease (a result, an expiry, a
release, a new lease) just forgets the entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dtq.core.events import EventKind
from dtq.models import Task, TaskStatus

if TYPE_CHECKING:
    from dtq.net.protocol.session import Session

_ENDS_WITH_NOTICE = {EventKind.TASK_CANCELLED: "cancelled", EventKind.TASK_DELETED: "deleted"}


class Hub:
    def __init__(self) -> None:
        self._held: dict[str, tuple[Session, str]] = {}  # task id -> (holder, lease id)
        self.sessions: set[Session] = set()
        self.closing = False

    def track(self, session: Session, task: Task) -> None:
        if task.lease is not None:
            self._held[task.id] = (session, task.lease.id)
            session.held.add(task.id)

    def forget(self, session: Session) -> None:
        for task_id in session.held:
            entry = self._held.get(task_id)
            if entry is not None and entry[0] is session:
                del self._held[task_id]
        session.held.clear()
        self.sessions.discard(session)

    def on_task(self, kind: str, task: Task) -> None:
        """TaskQueue listener."""
        entry = self._held.get(task.id)
        if entry is None:
            return
        session, lease_id = entry
        notice = _ENDS_WITH_NOTICE.get(EventKind(kind))
        if notice is not None:
            del self._held[task.id]
            session.held.discard(task.id)
            session.notice_cancelled(task.id, notice)
        elif task.status != TaskStatus.RUNNING or task.lease is None or task.lease.id != lease_id:
            del self._held[task.id]
            session.held.discard(task.id)

    def held_count(self) -> int:
        return len(self._held)

    def close_all(self) -> None:
        """Shutdown: every connection is told and closed."""
        self.closing = True
        for session in list(self.sessions):
            session.shutdown()
