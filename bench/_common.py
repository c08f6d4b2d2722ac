"""Helpers shared by the bench scripts: percentiles, /proc readings, machine facts, tables."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind 0, read, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(p / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    values = sorted(samples_s)
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 3),
        "p90_ms": round(percentile(values, 90) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "max_ms": round(values[-1] * 1000, 3) if values else float("nan"),
        "mean_ms": round(sum(values) / len(values) * 1000, 3) if values else float("nan"),
    }


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """Memory lines of /proc/<pid>/status in KiB (VmRSS, VmHWM, RssAnon, RssFile, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key.startswith(("Vm", "Rss")) and rest.strip().endswith("kB"):
                out[key] = int(rest.split()[0])
    return out


def proc_cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def proc_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class SystemCpu:
    """System-wide CPU use from /proc/stat, to tell how much other processes took meanwhile.

    The bench machine is shared (other engineers run tests on it): every result records how
    many cores were busy in total and how many of them were not the bench's own processes.
    """

    def __init__(self) -> None:
        self.busy, self.total = self._read()
        self.t0 = time.perf_counter()

    @staticmethod
    def _read() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            parts = [int(x) for x in fh.readline().split()[1:]]
        idle = parts[3] + parts[4]  # idle + iowait
        total = sum(parts[:8])
        return total - idle, total

    def busy_cores(self) -> float:
        """Average number of busy cores since this object was made."""
        busy, total = self._read()
        if total == self.total:
            return 0.0
        return (busy - self.busy) / (total - self.total) * (os.cpu_count() or 1)


def contention(cpu: SystemCpu, own_cpu_seconds: float, wall_s: float) -> dict[str, float]:
    busy = cpu.busy_cores()
    own = own_cpu_seconds / wall_s if wall_s > 0 else 0.0
    return {"machine_busy_cores": round(busy, 2), "other_cores": round(max(0.0, busy - own), 2)}


def wait_for_quiet(max_wait_s: float, threshold_cores: float = 0.3) -> dict[str, float]:
    """Wait (at most max_wait_s) until other processes use less than threshold_cores."""
    t0 = time.perf_counter()
    busy = 0.0
    while True:
        cpu = SystemCpu()
        time.sleep(1.0)
        busy = cpu.busy_cores()
        waited = time.perf_counter() - t0
        if busy < threshold_cores or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "busy_cores": round(busy, 2)}


def machine_facts() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_DIR,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    src = hashlib.sha256()
    for path in sorted((REPO_DIR / "dtq").rglob("*.py")):
        src.update(path.relative_to(REPO_DIR).as_posix().encode())
        src.update(path.read_bytes())
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,  # HEAD; the tree may hold uncommitted changes:
        "dtq_source_sha256": src.hexdigest()[:16],  # identifies the dtq/ code measured
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def create_admin_key(url: str, password: str = "password", name: str = "bench") -> str:
    """An admin API key from a running server: log in as admin, create the key over the API
    (`dtq keys create --data-dir` refuses a data directory that does not exist yet)."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as http:
        login = http.post("/api/v1/auth/login", json={"username": "admin", "password": password})
        login.raise_for_status()
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        created = http.post("/api/v1/api-keys", json={"name": name, "role": "admin"},
                            headers=headers)  # fmt: skip
        created.raise_for_status()
        key: str = created.json()["data"]["key"]
        return key
