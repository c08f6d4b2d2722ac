"""Print constraints.txt: the installed version of every runtime dependency of dtq, transitively.

    python tools/constraints.py > constraints.txt

Run it in the environment CI tested (after `pip install -c constraints.txt -e '.[test]'` and an
upgrade you mean to keep), so the image (`pip install -c constraints.txt .`) gets exactly those
versions. Test-only packages are left out: the image does not install them.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str]) -> dict[str, str]:
    """name -> installed version, for `requirements` and everything they need (no extras)."""
    pinned: dict[str, str] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # e.g. a backport for an older Python
        name = canonical(req.name)
        if name in pinned:
            continue
        dist = metadata.distribution(req.name)
        pinned[name] = dist.version
        todo.extend(Requirement(r) for r in dist.requires or [])
    return pinned


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = closure(project["dependencies"])
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(f"# dtq's runtime dependencies, exactly as CI tested them (Python {python}, Linux).")
    print("# Made by tools/constraints.py; the Dockerfile installs with `pip install -c`.")
    for name in sorted(pinned):
        print(f"{name}=={pinned[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
