"""Roles, permissions, and the one table that maps the first to the second.

401 means "who are you?" (see `dtq.core.auth.tokens` and `dtq.core.auth.apikeys`); 403 means "you may
not", and comes only from `require` here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

from dtq.errors import Forbidden
from dtq.models import Role as Role  # stored in user and key records: a ground-floor type


class Permission(enum.StrEnum):
    TASKS_READ = "tasks:read"  # list/get tasks, /ws/tasks
    TASKS_CREATE = "tasks:create"  # POST /tasks, POST /tasks/batch
    TASKS_WRITE = "tasks:write"  # PUT (update, cancel), DELETE
    TASKS_WORK = "tasks:work"  # lease, complete, fail, extend, ack
    WORKERS_READ = "workers:read"  # list/get workers, /workers/status
    WORKERS_HEARTBEAT = "workers:heartbeat"  # POST /workers/heartbeat
    ANALYTICS_READ = "analytics:read"  # dashboard, trends, export, /ws/metrics, /metrics
    QUEUES_READ = "queues:read"  # list/get queues
    QUEUES_WRITE = "queues:write"  # configure, pause, resume, purge queues
    WEBHOOKS = "webhooks"  # register, list, delete webhooks; see their deliveries
    ADMIN = "admin"  # users, API keys


_READ_ONLY = frozenset(
    {
        Permission.TASKS_READ,
        Permission.WORKERS_READ,
        Permission.ANALYTICS_READ,
        Permission.QUEUES_READ,
    }
)

# The one role -> permission table (DESIGN.md "Auth").
# - operator: every task, worker, analytics and webhook operation, including running a worker
#   itself; never users or API keys.
# - worker: what a worker process needs, plus TASKS_CREATE because workers commonly enqueue
#   follow-up tasks (fan-out, pipelines). It cannot update, cancel or delete other tasks, and it
#   does not see the worker list or analytics.
# - viewer: read only.
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType(
    {
        Role.ADMIN: frozenset(Permission),
        Role.OPERATOR: frozenset(Permission) - {Permission.ADMIN},
        Role.WORKER: frozenset(
            {
                Permission.TASKS_READ,
                Permission.TASKS_CREATE,
                Permission.TASKS_WORK,
                Permission.WORKERS_HEARTBEAT,
            }
        ),
        Role.VIEWER: _READ_ONLY,
    }
)
assert set(ROLE_PERMISSIONS) == set(Role), "every role needs a row in ROLE_PERMISSIONS"


def permissions_for(role: Role) -> frozenset[Permission]:
    return ROLE_PERMISSIONS[role]


def has_permission(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]


def require(role: Role, permission: Permission) -> None:
    """Raise `Forbidden` unless `role` grants `permission`."""
    if permission not in ROLE_PERMISSIONS[role]:
        # Name the roles that would do, so the caller knows what key or user to ask for.
        allowed = [str(r) for r in Role if permission in ROLE_PERMISSIONS[r]]
        raise Forbidden(
            f"Role '{role}' does not have permission '{permission}'"
            f" (roles that do: {', '.join(allowed)})",
            reason="insufficient_role",
            role=str(role),
            required_permission=str(permission),
            allowed_roles=allowed,
        )
