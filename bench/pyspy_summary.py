"""Summarise a py-spy raw (collapsed stacks) profile as text: hot lines and hot functions.

    py-spy record --rate 500 --format raw -o prof.txt --pid <PID> --duration 10
    python bench/pyspy_summary.py prof.txt [--top 25] [--focus dtq/]

"self" = samples whose innermost frame is that line; "incl" = samples with that frame anywhere
on the stack (counted once per stack). Stacks are split by thread: the trio (main) thread and
the worker threads (`trio.to_thread`, where the LMDB writer runs).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def parse(path: Path) -> list[tuple[list[tuple[str, str, int]], int]]:
    stacks = []
    for raw in path.read_text().splitlines():
        raw = raw.strip()
        if not raw:
            continue
        text, _, count = raw.rpartition(" ")
        frames = []
        for part in text.split(";"):
            m = _FRAME.match(part)
            if m:
                frames.append((m["func"], m["file"], int(m["line"])))
            else:
                frames.append((part, "?", 0))
        stacks.append((frames, int(count)))
    return stacks


def thread_of(frames: list[tuple[str, str, int]]) -> str:
    files = " ".join(f for _, f, _ in frames[:6])
    return "worker thread" if "threading.py" in files else "main (trio) thread"


def summarise(path: Path, top: int, focus: str | None) -> str:
    stacks = parse(path)
    total = sum(c for _, c in stacks)
    out = [f"{path}: {total} samples"]
    by_thread: Counter[str] = Counter()
    for frames, c in stacks:
        by_thread[thread_of(frames)] += c
    for name, c in by_thread.most_common():
        out.append(f"  {name}: {c} samples ({100 * c / total:.1f}%)")

    self_line: Counter[str] = Counter()
    incl_func: Counter[str] = Counter()
    incl_line: Counter[str] = Counter()
    for frames, c in stacks:
        func, file, line = frames[-1]
        self_line[f"{file}:{line} {func}"] += c
        seen_f: set[str] = set()
        seen_l: set[str] = set()
        for func, file, line in frames:
            fkey = f"{func} ({file})"
            lkey = f"{file}:{line} {func}"
            if fkey not in seen_f:
                seen_f.add(fkey)
                incl_func[fkey] += c
            if (focus is None or focus in file) and lkey not in seen_l:
                seen_l.add(lkey)
                incl_line[lkey] += c

    def block(title: str, counter: Counter[str], keep: str | None = None) -> None:
        out.append(f"\n{title}")
        n = 0
        for key, c in counter.most_common():
            if keep is not None and keep not in key:
                continue
            out.append(f"  {100 * c / total:5.1f}%  {c:6d}  {key}")
            n += 1
            if n >= top:
                break

    block("top self (innermost line):", self_line)
    block("top inclusive functions:", incl_func)
    if focus:
        block(f"top inclusive lines in {focus}:", incl_line)
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description="summarise a py-spy raw profile")
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--focus", default="dtq/", help="also list hot lines in files containing this")
    args = ap.parse_args()
    print(summarise(args.profile, args.top, args.focus or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
