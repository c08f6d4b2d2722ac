"""dtq: a distributed task queue.

Layers go one way:  models/errors  <-  core (lifecycle, retry, dispatcher, queue)  <-  storage;
`dtq.net` (HTTP) and the client/worker/CLI sit on top and use only what is below them.
The core never imports quart, hypercorn or lmdb directly; storage never imports HTTP.
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
from dtq.client.worker import Worker
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
    "__version__",
]
