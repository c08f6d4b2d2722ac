"""The import arrows, read from the source with `ast` (nothing is imported).

The client rule: `dtq/client/` speaks only the public protocols. It may import the ground floor
and itself, nothing of the server (storage, core, net). Other layers' rules come next to it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

DTQ = Path(__file__).resolve().parents[2] / "dtq"

GROUND_FLOOR = {
    "dtq.errors", "dtq.models", "dtq.messages", "dtq.retry", "dtq.ids", "dtq.clock",
}  # fmt: skip
CLIENT_MAY_IMPORT = (*GROUND_FLOOR, "dtq.client")


def module_name(path: Path) -> str:
    parts = path.relative_to(DTQ.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every dtq module `source` imports (`from dtq import x` counts as `dtq.x`)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names if target == "dtq")


def allowed(target: str, may_import: tuple[str, ...]) -> bool:
    if target != "dtq" and not target.startswith("dtq."):
        return True  # the standard library and third-party packages
    if target == "dtq.__version__":
        return True
    return any(target == ok or target.startswith(ok + ".") for ok in may_import)


def forbidden_imports(files: list[Path], may_import: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        module = module_name(path)
        for target in imported_modules(path.read_text(), module, path.name == "__init__.py"):
            if target != "dtq" and not allowed(target, may_import):
                found.append(f"{path.relative_to(DTQ.parent)} imports {target}")
    return found


def test_the_client_imports_nothing_of_the_server() -> None:
    files = sorted((DTQ / "client").rglob("*.py"))
    assert len(files) >= 5
    assert forbidden_imports(files, CLIENT_MAY_IMPORT) == []


@pytest.mark.parametrize(
    "line",
    [
        "from dtq.storage.lmdb.store import LmdbStore",
        "import dtq.net.app",
        "from dtq import queue",
        "from dtq.core.states import check_lease",
        "from ..ops import create",
        "from .. import auth",
    ],
)
def test_a_forbidden_import_is_caught(line: str) -> None:
    fake = DTQ / "client" / "_layering_probe.py"  # only its name is used: nothing is written
    source = f'"""probe"""\n\nfrom dtq.errors import Conflict\n{line}\n'
    targets = list(imported_modules(source, module_name(fake)))
    assert [t for t in targets if not allowed(t, CLIENT_MAY_IMPORT) and t != "dtq"]
