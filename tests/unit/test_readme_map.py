"""The README's "Where things are" map matches the tree: every package of dtq has its line,
and every module the map names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def the_map() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Where things are")
    return text[start : text.index("\n\n", text.index("| package |", start))]


def rows() -> dict[str, str]:
    out = {}
    for line in the_map().splitlines():
        m = re.match(r"\| `(dtq/[a-z_/.]*)`[^|]*\| (.*?) \|", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_every_package_has_a_line() -> None:
    packages = {f"dtq/{p.name}/" for p in (ROOT / "dtq").iterdir() if (p / "__init__.py").exists()}
    assert packages - set(rows()) == set()
    assert "dtq/server.py" in rows() and "dtq/" in rows()


def test_the_modules_it_names_exist() -> None:
    for package, holds in rows().items():
        if not package.endswith("/"):
            continue
        base = ROOT / package
        for name in set(re.findall(r"`([a-z_]+)(?:\.py|/)?`", holds)) - {"dtq"}:
            candidates = [base / f"{name}.py", base / name, ROOT / "dtq" / f"{name}.py"]
            assert any(c.exists() for c in candidates), f"{package}: {name}"
