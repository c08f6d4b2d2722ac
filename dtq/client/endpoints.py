"""Which server a client talks to, when it knows several (`DTQ_URL=http://a:5000,http://b:5000`).

Servers sharing one store are one queue, so any of them will do. A client sticks to the one
that answers and moves to the next when it is down: the connection is refused or times out, or
it answers 503 (shutting down, database unreachable). Pure bookkeeping, no I/O.

Moving on is safe for what dtq resends: a request that never reached a server (connection
refused) did nothing, and a complete/ack that may have landed is fenced by its lease id, so a
second copy through another server changes nothing (see `Worker` for the 409 that follows).
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from dtq.errors import Unavailable


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """`"http://a:5000, http://b:5000"` or a list of URLs -> distinct URLs, order kept."""
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    cleaned = [p.strip().rstrip("/") for p in parts if p and p.strip()]
    if not cleaned:
        raise ValueError("no server URL given")
    return list(dict.fromkeys(cleaned))


def never_arrived(exc: BaseException) -> bool:
    """The request cannot have reached the server: safe to send anywhere, whatever it is."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def server_down(exc: BaseException) -> bool:
    """A sign that this server, not the request, is the trouble: try another one."""
    return isinstance(exc, httpx.TransportError | Unavailable)


class Endpoints:
    """The known servers and the one in use. `failed(url)` moves on from `url` (if it is
    still the current one: concurrent requests that saw the same failure move once)."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = parse_urls(urls)
        self._current = 0
        self.switches = 0  # how many times the client moved on (a figure for tests and logs)

    @property
    def current(self) -> str:
        return self.urls[self._current]

    def __len__(self) -> int:
        return len(self.urls)

    def failed(self, url: str) -> str:
        """`url` looks down: the URL to use from now on."""
        if len(self.urls) > 1 and url == self.current:
            self._current = (self._current + 1) % len(self.urls)
            self.switches += 1
        return self.current
