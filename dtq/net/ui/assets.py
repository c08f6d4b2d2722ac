"""The dashboard's static files: read and gzipped once, served with an ETag and a long cache.

Only files that ship in `static/` are served (the table is built at start-up from the package
directory, so a request can never name a path outside it). URLs carry a content hash, so an
upgrade is fetched anew while unchanged files stay cached for a year.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_AGE_S = 365 * 24 * 3600

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
_COMPRESSIBLE = frozenset({".js", ".css", ".svg", ".txt"})


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str  # unquoted


def load(path: Path) -> Asset:
    body = path.read_bytes()
    gzipped = (
        gzip.compress(body, compresslevel=6, mtime=0) if path.suffix in _COMPRESSIBLE else None
    )
    return Asset(body, gzipped, CONTENT_TYPES[path.suffix], hashlib.sha256(body).hexdigest()[:20])


def load_all(root: Path = STATIC_DIR) -> dict[str, Asset]:
    """Every servable file under `root`, by its path relative to it ("pages/tasks.js")."""
    found: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in CONTENT_TYPES:
            found[path.relative_to(root).as_posix()] = load(path)
    return found
