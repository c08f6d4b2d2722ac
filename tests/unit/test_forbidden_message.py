"""A permission refusal tells the caller which roles would have been allowed."""

from __future__ import annotations

import pytest

from dtq.core.auth import Permission, Role
from dtq.core.auth.roles import require
from dtq.errors import Forbidden


def test_refusal_names_the_roles_that_have_the_permission() -> None:
    with pytest.raises(Forbidden) as info:
        require(Role.WORKER, Permission.TASKS_WRITE)
    assert info.value.message == (
        "Role 'worker' does not have permission 'tasks:write' (roles that do: admin, operator)"
    )
    assert info.value.details["allowed_roles"] == ["admin", "operator"]

    with pytest.raises(Forbidden) as info:
        require(Role.OPERATOR, Permission.ADMIN)
    assert info.value.message.endswith("(roles that do: admin)")
