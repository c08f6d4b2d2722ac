"""`dtq/client/_sync.py` is generated from `_async.py` by `tools/unasync.py`: never stale."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

from dtq.client import AsyncClient, Client

ROOT = Path(__file__).resolve().parents[2]


def load_unasync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync", ROOT / "tools" / "unasync.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("unasync", module)
    spec.loader.exec_module(module)
    return module


def test_the_sync_client_is_what_the_generator_makes() -> None:
    unasync = load_unasync()
    assert unasync.main(["--check"]) == 0, "run: python tools/unasync.py"


def test_a_change_to_the_async_client_makes_the_sync_one_stale() -> None:
    unasync = load_unasync()
    source = unasync.SOURCE.read_text()
    changed = source.replace("async def get(", "async def get_one(")
    assert changed != source
    assert unasync.generate(changed) != unasync.TARGET.read_text()


def test_the_rewrite() -> None:
    unasync = load_unasync()
    line = "    async def f(self) -> AsyncIterator[X]:  # await me\n"
    assert unasync.rewrite_line(line) == "    def f(self) -> Iterator[X]:  # me\n"
    line = "        async with httpx.AsyncClient() as c:\n"
    assert unasync.rewrite_line(line) == "        with httpx.Client() as c:\n"
    assert unasync.rewrite_line("await self.aclose()") == "self.close()"
    assert unasync.rewrite_line("from dtq.client import _async_io as _io") == (
        "from dtq.client import _sync_io as _io"
    )
    assert unasync.leftovers("x = 1\nasync def f(): pass\n") == ["line 2: async def f(): pass"]
    assert unasync.leftovers("'async with trio' # await\n") == []


def test_both_clients_offer_the_same_methods() -> None:
    def methods(cls: type) -> dict[str, list[str]]:
        return {
            name: list(inspect.signature(fn).parameters)
            for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("__")
        }

    sync, async_ = methods(Client), methods(AsyncClient)
    async_["close"] = async_.pop("aclose")
    assert sync == async_
