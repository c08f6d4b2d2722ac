"""One error tree for all of dtq.

Each class carries the HTTP status and the API guide's error code; only `dtq.net` turns them
into the guide's JSON error. The docstring is the default message.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DtqError(Exception):
    """Internal server error."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str | None = None,
        *,
        field: str | None = None,
        reason: str | None = None,
        **details: Any,
    ) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details: dict[str, Any] = {}
        if field is not None:
            self.details["field"] = field
        if reason is not None:
            self.details["reason"] = reason
        self.details.update(details)
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, details={self.details!r})"


class InvalidRequest(DtqError):
    """Request validation failed."""

    status = 400
    code = "INVALID_REQUEST"


class Unauthorized(DtqError):
    """Missing or invalid authentication."""

    status = 401
    code = "UNAUTHORIZED"


class Forbidden(DtqError):
    """Permission denied."""

    status = 403
    code = "FORBIDDEN"


class NotFound(DtqError):
    """Resource not found."""

    status = 404
    code = "NOT_FOUND"


class MethodNotAllowed(DtqError):
    """Method not allowed for this resource."""

    status = 405
    code = "INVALID_REQUEST"


class Conflict(DtqError):
    """Resource conflict."""

    status = 409
    code = "CONFLICT"


class LeaseLost(Conflict):
    """The lease is not the task's current lease (expired, re-granted, or the task was cancelled)."""

    # The `details.reason` values it goes out with: how a client tells it from other conflicts.
    reasons: ClassVar[tuple[str, ...]] = ("stale or unknown lease", "lease expired")


class InvalidTransition(Conflict):
    """The task cannot move to that status from its current one."""


class PayloadTooLarge(DtqError):
    """Request body too large."""

    status = 413
    code = "INVALID_REQUEST"


class UnsupportedMediaType(DtqError):
    """Request bodies must be JSON (Content-Type: application/json)."""

    status = 415
    code = "INVALID_REQUEST"  # the guide's codes name no media-type error; 405/413 do the same


class RateLimited(DtqError):
    """Too many requests."""

    status = 429
    code = "RATE_LIMITED"

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s


class Unavailable(DtqError):
    """Service temporarily unavailable."""

    status = 503
    code = "SERVICE_UNAVAILABLE"
    retry_after_s: int | None = None  # sent as Retry-After when set

    def __init__(
        self, message: str | None = None, *, retry_after_s: int | None = None, **kw: Any
    ) -> None:
        super().__init__(message, **kw)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class StorageError(Unavailable):
    """Storage is unavailable."""
