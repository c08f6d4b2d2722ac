"""The import arrows, read from the source with `ast` (nothing is imported).

From the ground up (each layer may import the ones below it, nothing above):

    ground floor  errors models messages settings clock ids retry logs wire   (each other only)
    storage       the ground floor                    (nothing of core, net, client, cli, server)
    core          the ground floor, and of storage only the port `dtq.storage.base`
    net           the ground floor, core, storage     (nothing of client, cli, server)
    client        the ground floor only               (it speaks the public protocols)
    server.py, cli/   anything (the composition root and the command line)

`dtq/__init__.py` is the public surface: the ground floor and the client.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

DTQ = Path(__file__).resolve().parents[2] / "dtq"

GROUND_FLOOR = (
    "dtq.errors", "dtq.models", "dtq.messages", "dtq.settings", "dtq.clock", "dtq.ids",
    "dtq.retry", "dtq.logs", "dtq.wire",
)  # fmt: skip
CLIENT_MAY_IMPORT = (*GROUND_FLOOR, "dtq.client")
STORAGE_MAY_IMPORT = (*GROUND_FLOOR, "dtq.storage")
CORE_MAY_IMPORT = (*GROUND_FLOOR, "dtq.core", "dtq.storage.base")
NET_MAY_IMPORT = (*GROUND_FLOOR, "dtq.storage", "dtq.core", "dtq.net")
TOP_MAY_IMPORT = (*GROUND_FLOOR, "dtq.client")  # dtq/__init__.py: the public surface

# Arrows still broken on this branch, by name: core reaching into the LMDB backend and the
# writer (issue 9, branch i9-storage, puts a typed port between them). Remove each line as its
# arrow is fixed; the test fails on an allowlisted arrow that no longer exists, so none lingers.
KNOWN_BROKEN: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(DTQ.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    if name == "dtq" or not name.startswith("dtq."):
        return False
    path = DTQ.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


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
            # `from dtq.storage import keys` imports the module dtq.storage.keys; names that
            # are not modules are imported from `target` itself.
            names = [a.name for a in node.names]
            submodules = [n for n in names if target == "dtq" or _is_module(f"{target}.{n}")]
            if target == "dtq" or len(submodules) < len(names):
                yield target
            yield from (f"{target}.{name}" for name in submodules)


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


def ground_floor_files() -> list[Path]:
    files = [DTQ / (name.removeprefix("dtq.") + ".py") for name in GROUND_FLOOR]
    assert all(f.exists() for f in files)
    return files


# (which files, what they may import)
LAYERS = {
    "ground floor": (ground_floor_files, GROUND_FLOOR),
    "storage": (lambda: sorted((DTQ / "storage").rglob("*.py")), STORAGE_MAY_IMPORT),
    "core": (lambda: sorted((DTQ / "core").rglob("*.py")), CORE_MAY_IMPORT),
    "net": (lambda: sorted((DTQ / "net").rglob("*.py")), NET_MAY_IMPORT),
    "client": (lambda: sorted((DTQ / "client").rglob("*.py")), CLIENT_MAY_IMPORT),
    "dtq/__init__.py": (lambda: [DTQ / "__init__.py"], TOP_MAY_IMPORT),
}


def all_forbidden_imports() -> list[str]:
    found = []
    for files, may_import in LAYERS.values():
        found += forbidden_imports(files(), may_import)
    return found


@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_layer_imports_only_what_is_below_it(layer: str) -> None:
    files, may_import = LAYERS[layer]
    assert files()
    assert [f for f in forbidden_imports(files(), may_import) if f not in KNOWN_BROKEN] == []


def test_the_allowlist_of_broken_arrows_holds_only_arrows_that_exist() -> None:
    assert KNOWN_BROKEN - set(all_forbidden_imports()) == set()


def test_every_module_belongs_to_a_layer() -> None:
    covered = {f for files, _ in LAYERS.values() for f in files()}
    top = {DTQ / "server.py", *(DTQ / "cli").rglob("*.py")}
    assert set(DTQ.rglob("*.py")) - covered - top == set()


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


@pytest.mark.parametrize(
    ("layer", "line"),
    [
        ("storage", "from dtq.core import ops"),
        ("storage", "from dtq.net.app import create_app"),
        ("core", "from dtq.net.routing import RouteSpec"),
        ("core", "from dtq.storage.lmdb.store import LmdbStore"),
        ("core", "from dtq import server"),
        ("net", "from dtq.cli.healthcheck import local_url"),
        ("net", "from dtq.client import Client"),
        ("ground floor", "from dtq.core.states import check_lease"),
        ("ground floor", "from dtq.storage.base import Store"),
    ],
)
def test_a_forbidden_import_is_caught_in_every_layer(layer: str, line: str) -> None:
    _, may_import = LAYERS[layer]
    source = f'"""probe"""\n\nfrom dtq.errors import Conflict\n{line}\n'
    targets = list(imported_modules(source, "dtq.probe"))
    assert [t for t in targets if not allowed(t, may_import) and t != "dtq"]
