"""`dtq.__all__` is the public surface: the client SDK and the exceptions it raises."""

from __future__ import annotations

import dtq
import dtq.errors


def test_the_public_surface() -> None:
    assert set(dtq.__all__) == {
        "AsyncClient", "Client", "Worker", "WorkerConfig", "Task", "__version__",
        "DtqError", "InvalidRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict",
        "LeaseLost", "RateLimited", "Unavailable", "StorageError",
    }  # fmt: skip
    assert len(dtq.__all__) == len(set(dtq.__all__))


def test_every_name_in_all_is_there() -> None:
    for name in dtq.__all__:
        assert getattr(dtq, name) is not None, name


def test_the_exceptions_are_the_ones_the_client_raises() -> None:
    for name in dtq.__all__:
        obj = getattr(dtq, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, dtq.DtqError)
            assert getattr(dtq.errors, name) is obj


def test_nothing_server_side_is_public() -> None:
    public = {getattr(dtq, name).__module__ for name in dtq.__all__ if name != "__version__"}
    assert all(m.startswith(("dtq.client", "dtq.errors", "dtq.messages")) for m in public)
