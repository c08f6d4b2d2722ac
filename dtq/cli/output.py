"""Printing for people (a table, or one record as a vertical field list) or for programs (JSON).

JSON is printed when asked for (`--json`) or when standard output is not a terminal, so a
pipe or a script always gets the same machine-readable shape.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgspec

_INLINE_JSON_CHARS = 70  # a payload or result longer than this is printed indented


def wants_json(as_json: bool) -> bool:
    return as_json or not sys.stdout.isatty()


def print_json(obj: Any) -> None:
    print(json.dumps(msgspec.to_builtins(obj), indent=2))


def print_rows(obj: Any, as_json: bool) -> None:
    """A list as a table with one row each (JSON for programs)."""
    data = msgspec.to_builtins(obj)
    if wants_json(as_json):
        print(json.dumps(data, indent=2))
        return
    print(table(data if isinstance(data, list) else [data]))


def print_record(obj: Any, as_json: bool) -> None:
    """One record (a task, say) as a field list (JSON for programs)."""
    data = msgspec.to_builtins(obj)
    if wants_json(as_json):
        print(json.dumps(data, indent=2))
        return
    print(vertical(data))


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(none)"
    cols = list(rows[0].keys())
    cells = [[_one_line(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def vertical(record: dict[str, Any]) -> str:
    """`field  value` lines, empty fields left out; an error's traceback follows as plain text,
    as Python printed it, rather than escaped inside a value."""
    rows: list[tuple[str, str]] = []
    traceback: str | None = None
    for key, value in record.items():
        if value is None or value == [] or value == {}:
            continue
        if key == "error" and isinstance(value, dict):
            traceback = value.get("traceback")
            value = f"{value.get('type') or 'Error'}: {value.get('message', '')}"
        rows.append((key, _cell(value)))
    if not rows:
        return "(empty)"
    width = max(len(k) for k, _ in rows)
    lines: list[str] = []
    for key, text in rows:
        first, *rest = text.splitlines() or [""]
        lines.append(f"{key.ljust(width)}  {first}".rstrip())
        lines.extend(f"{' ' * width}  {line}".rstrip() for line in rest)
    if traceback:
        lines.append("traceback:")
        lines.extend(f"  {line}".rstrip() for line in traceback.rstrip("\n").splitlines())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    text = json.dumps(value)
    return text if len(text) <= _INLINE_JSON_CHARS else json.dumps(value, indent=2)


def _one_line(value: Any) -> str:
    """A table cell: never a line break, which would tear the row apart."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)
    return " ".join(text.split()) if "\n" in text else text


def progress(done: int, total: int, *, megabytes: bool = False) -> None:
    """A one-line progress bar on stderr, only on a terminal."""
    if not sys.stderr.isatty():
        return
    width = 40
    filled = int(width * done / max(total, 1))
    amount = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if megabytes else f"{done}/{total}"
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {amount}")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def progress_bytes(done: int, total: int) -> None:
    progress(done, total, megabytes=True)
