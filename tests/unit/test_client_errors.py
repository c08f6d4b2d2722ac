"""The client's one table from the server's error envelope back to the error tree, fed with the
server's own envelopes (`dtq.net.envelope.error_body` of the errors core raises)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import msgspec
import pytest

from dtq import errors
from dtq.client import ERRORS, api_error
from dtq.client._common import error_class
from dtq.core import states as lifecycle
from dtq.models import TaskCreate
from dtq.net.envelope import error_body

NOW = 1_700_000_000.0


def through_the_wire(exc: errors.DtqError, **headers: str) -> errors.DtqError:
    response = httpx.Response(exc.status, content=error_body(exc), headers=headers)
    return api_error(response)


def leased_task() -> Any:
    task = lifecycle.new_task(TaskCreate(name="job"), task_id=str(uuid.uuid4()), seq=1, now=NOW)
    return lifecycle.grant_lease(task, worker_id="w1", lease_s=60, now=NOW)


def test_stale_and_expired_leases_come_back_as_lease_lost() -> None:
    task = leased_task()
    assert task.lease is not None
    with pytest.raises(errors.LeaseLost) as stale:
        lifecycle.check_lease(task, "not-the-lease", NOW)
    with pytest.raises(errors.LeaseLost) as expired:
        lifecycle.check_lease(task, task.lease.id, NOW + 61)
    for exc in (stale.value, expired.value):
        assert exc.details["reason"] in errors.LeaseLost.reasons
        back = through_the_wire(exc)
        assert type(back) is errors.LeaseLost
        assert back.details == exc.details and back.message == exc.message
        assert back.http_status == 409  # type: ignore[attr-defined]


def test_other_conflicts_stay_conflicts_whatever_their_field() -> None:
    finished = msgspec.structs.replace(leased_task(), status="completed")
    with pytest.raises(errors.InvalidTransition) as caught:
        lifecycle.check_transition(finished, "cancelled")
    assert type(through_the_wire(caught.value)) is errors.Conflict
    # The field alone does not make a LeaseLost: only the reasons the server gives one.
    other = errors.Conflict("something else", field="lease_id", reason="some other reason")
    assert type(through_the_wire(other)) is errors.Conflict


@pytest.mark.parametrize(
    "exc",
    [
        errors.InvalidRequest("bad", field="priority", reason="not one of high, medium, low"),
        errors.Unauthorized(),
        errors.Forbidden(),
        errors.NotFound("gone", field="task_id", reason="no such task"),
        errors.MethodNotAllowed(),
        errors.PayloadTooLarge(),
        errors.Unavailable(),
        errors.StorageError(),
    ],
)
def test_each_code_has_one_class(exc: errors.DtqError) -> None:
    back = through_the_wire(exc)
    expected = ERRORS[(exc.code, None)]
    assert type(back) is expected
    assert back.details == exc.details


def test_rate_limited_keeps_retry_after() -> None:
    back = through_the_wire(errors.RateLimited(), **{"Retry-After": "7"})
    assert isinstance(back, errors.RateLimited) and back.retry_after_s == 7


def test_unknown_codes_and_bodies_are_plain_dtq_errors() -> None:
    assert error_class("TEAPOT", None) is errors.DtqError
    assert error_class("CONFLICT", "lease expired") is errors.LeaseLost
    back = api_error(httpx.Response(502, text="Bad Gateway"))
    assert type(back) is errors.DtqError and back.message == "Bad Gateway"
