"""Generate the synchronous client `dtq/client/_sync.py` from `dtq/client/_async.py`.

    python tools/unasync.py           # (re)write _sync.py
    python tools/unasync.py --check   # exit 1 if _sync.py is not what _async.py generates

The rewrite is textual, line by line, with whole-word patterns (`async def` -> `def`, `await x`
-> `x`, `AsyncClient` -> `Client`, `aclose` -> `close`, `_async_io` -> `_sync_io`, ...). What
differs between the flavours beyond that (sleeping, timeouts, the WebSocket wait) lives in the
hand-written `_async_io.py` / `_sync_io.py`, which offer the same names. The module docstring is
replaced, a header says the file is generated, and the result is run through `ruff format` (a
line that lost its `await` may now fit on one line). Any `async`, `await`, `Async*`, `anyio`,
`trio` or `a*` dunder left in the code (outside strings and comments) is an error: the script
then needs a new rule, or the construct belongs in the flavour modules.
"""

from __future__ import annotations

import argparse
import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "dtq" / "client" / "_async.py"
TARGET = ROOT / "dtq" / "client" / "_sync.py"

HEADER = (
    "# GENERATED from dtq/client/_async.py by tools/unasync.py: do not edit.\n"
    '# Change _async.py (or _sync_io.py) and run "python tools/unasync.py".\n'
)
DOCSTRING = '''"""`Client`: the dtq HTTP API, synchronous.

Generated from `_async.py` (the hand-written `AsyncClient`); its flavour-specific I/O is in
`_sync_io.py`.
"""
'''

# (pattern, replacement), applied in order to every line.
RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"\basync (def|with|for)\b", r"\1"),
        (r"\bawait ", ""),
        (r"\b__a(enter|exit|iter|next)__\b", r"__\1__"),
        (r"\baclose\b", "close"),
        (r"\bStopAsyncIteration\b", "StopIteration"),
        (r"\bAsync(Iterator|Iterable|Generator|ContextManager)\b", r"\1"),
        (r"\bAsyncClient\b", "Client"),  # dtq's and httpx's
        (r"\b_async_io\b", "_sync_io"),
        (r"\b_async\b", "_sync"),
    ]
]
# Then on the whole text: a loop that only re-yields becomes `yield from` (an async generator
# cannot use `yield from`, a sync one should).
YIELD_LOOP = re.compile(r"^( *)for (\w+) in ([^\n]+):\n *yield \2\n", re.MULTILINE)
LEFTOVER = re.compile(r"^(async|await|anyio|trio|Async\w*|__a(enter|exit|iter|next)__|aclose)$")


def rewrite_line(line: str) -> str:
    for pattern, replacement in RULES:
        line = pattern.sub(replacement, line)
    return line


def replace_docstring(source: str) -> str:
    module = ast.parse(source)
    first = module.body[0] if module.body else None
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)):
        raise SystemExit(f"{SOURCE.name} must start with a module docstring")
    assert first.end_lineno is not None
    lines = source.splitlines(keepends=True)
    return DOCSTRING + "".join(lines[first.end_lineno :])


def leftovers(source: str) -> list[str]:
    """Async-only names still in the code (strings and comments are not looked at)."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and LEFTOVER.match(tok.string):
            found.append(f"line {tok.start[0]}: {tok.line.strip()}")
    return found


def ruff_format(source: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(TARGET), "-"],
        input=source, capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"ruff format failed on the generated code:\n{done.stderr}")
    return done.stdout


def generate(source: str) -> str:
    body = "".join(rewrite_line(line) for line in source.splitlines(keepends=True))
    body = YIELD_LOOP.sub(r"\1yield from \3\n", body)
    body = replace_docstring(body)
    if problems := leftovers(body):
        raise SystemExit("async-only code the rewrite does not handle:\n" + "\n".join(problems))
    return ruff_format(HEADER + body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if _sync.py is stale")
    args = parser.parse_args(argv)
    wanted = generate(SOURCE.read_text())
    current = TARGET.read_text() if TARGET.exists() else ""
    if args.check:
        if current != wanted:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python tools/unasync.py")
            return 1
        return 0
    if current != wanted:
        TARGET.write_text(wanted)
        print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
