"""What the command line prints for people: one task as a field list, lists as tables."""

from __future__ import annotations

from dtq.cli.output import table, vertical

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "jobs.py", line 12, in process\n'
    '    raise ValueError("bad input")\n'
    "ValueError: bad input\n"
)


def test_one_task_is_a_field_list_with_the_traceback_as_text() -> None:
    task = {
        "id": "7a1f0a8e-0000-4000-8000-000000000000",
        "name": "Process Data",
        "description": None,
        "status": "failed",
        "payload": {"file_path": "/data/input.csv"},
        "result": None,
        "error": {"message": "bad input", "type": "ValueError", "traceback": TRACEBACK},
        "attempts": 1,
        "tags": ["nightly", "csv"],
        "lease": None,
        "duration": 0.25,
    }
    assert vertical(task).splitlines() == [
        "id        7a1f0a8e-0000-4000-8000-000000000000",
        "name      Process Data",
        "status    failed",
        'payload   {"file_path": "/data/input.csv"}',
        "error     ValueError: bad input",
        "attempts  1",
        "tags      nightly, csv",
        "duration  0.25",
        "traceback:",
        "  Traceback (most recent call last):",
        '    File "jobs.py", line 12, in process',
        '      raise ValueError("bad input")',
        "  ValueError: bad input",
    ]


def test_a_long_value_is_indented_under_its_field() -> None:
    text = vertical({"id": "x", "result": {"rows": list(range(30))}})
    lines = text.splitlines()
    assert lines[0] == "id      x"
    assert lines[1] == "result  {"
    assert all(line.startswith("        ") for line in lines[2:])


def test_a_table_never_breaks_a_row() -> None:
    rows = [{"id": "a", "note": "two\nlines"}, {"id": "bb", "note": None}]
    assert table(rows).splitlines() == ["ID  NOTE", "a   two lines", "bb"]
    assert table([]) == "(none)"
