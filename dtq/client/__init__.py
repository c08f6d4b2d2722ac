"""The client SDK: `AsyncClient`, `Client` (generated from it) and the `Worker` runtime.

It speaks only the public HTTP/WebSocket API: it imports the ground floor (errors, models,
schemas, retry, ids, clock) and nothing of the server (storage, core, net).
`tests/unit/test_layering.py` checks that.
"""

from dtq.client._async import AsyncClient
from dtq.client._common import CLIENT_RETRY, DEFAULT_URL, ERRORS, FINAL_STATUSES, api_error
from dtq.client._sync import Client

__all__ = [
    "CLIENT_RETRY",
    "DEFAULT_URL",
    "ERRORS",
    "FINAL_STATUSES",
    "AsyncClient",
    "Client",
    "api_error",
]
