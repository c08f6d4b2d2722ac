"""`dtq.cli.supervisor`: restart policy, and giving up on a child that keeps dying."""

from __future__ import annotations

import sys
from pathlib import Path

from dtq.cli.supervisor import RestartPolicy, supervise


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=4.0)
    assert [policy.delay_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_child_that_keeps_dying_is_restarted_a_bounded_number_of_times(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    script = f"open({str(runs)!r}, 'a').write('x'); raise SystemExit(3)"
    policy = RestartPolicy(first_delay_s=0.01, max_delay_s=0.02, max_restarts=3)
    code = supervise(lambda slot: [sys.executable, "-c", script], 1, policy=policy)
    assert code == 1
    assert runs.read_text() == "xxxx"  # the first run and three restarts
