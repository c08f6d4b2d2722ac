"""dtq: a distributed task queue.

Layers go one way, and the folders show them (tests/unit/test_layering.py checks the arrows):

    ground floor  errors, models, messages, settings, clock, ids, retry, logs: import nothing above
    storage/      the port (`storage.base`), its backends (`storage.lmdb`, `storage.memory`); the ground floor
    core/         lifecycle, dispatcher, deadlines, the queue service; of storage, only the port
    net/          HTTP and WebSocket (routing, routes, envelope); calls core's API, never the client
    server.py     the composition root: picks the backend, builds core and net, runs them
    client/       Client, AsyncClient, Worker: the public wire protocol and the ground floor only
    cli/          the `dtq` command (server and client sides)

This package re-exports the public surface below: the client SDK and its exceptions. The rest
is internal.
"""

from dtq.errors import (
    Conflict,
    DtqError,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    NotFound,
    RateLimited,
    StorageError,
    Unauthorized,
    Unavailable,
)

__version__ = "1.0.0"

from dtq.client import AsyncClient, Client
from dtq.client.worker import Worker, WorkerConfig
from dtq.messages import TaskOut as Task

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "DtqError",
    "Forbidden",
    "InvalidRequest",
    "LeaseLost",
    "NotFound",
    "RateLimited",
    "StorageError",
    "Task",
    "Unauthorized",
    "Unavailable",
    "Worker",
    "WorkerConfig",
    "__version__",
]
