"""`dtq healthcheck`: is the server these settings describe answering `/health`?

For Docker's HEALTHCHECK (and any supervisor): it reads the same settings as `dtq serve` (host,
port, TLS certificate; flags, DTQ_* variables, the TOML file), so a server moved to another port
or switched to TLS stays healthy without editing the check. Exit status 0 when `/health`
answers 2xx within the timeout, 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import sys
from typing import TextIO

import httpx

from dtq.settings import Settings, local_url

__all__ = ["check_health", "local_url"]

DEFAULT_TIMEOUT_S = 4.0  # under Docker's default HEALTHCHECK --timeout of 5 s


def check_health(
    settings: Settings, *, timeout_s: float = DEFAULT_TIMEOUT_S, out: TextIO | None = None
) -> int:
    """0 when GET /health answers 2xx within `timeout_s` (connect to last byte), else 1."""
    out = sys.stderr if out is None else out
    url = local_url(settings) + "/health"
    try:
        # The certificate is not verified: this asks "is my own server up?" on a loopback
        # address, which a certificate issued for the public host name would not match.
        with httpx.Client(timeout=timeout_s, verify=False) as client:
            response = client.get(url)
    except httpx.TimeoutException:
        print(f"dtq healthcheck: {url}: no answer within {timeout_s:g} s", file=out)
        return 1
    except httpx.HTTPError as exc:
        print(f"dtq healthcheck: {url}: {exc or type(exc).__name__}", file=out)
        return 1
    if not response.is_success:
        print(f"dtq healthcheck: {url}: status {response.status_code}", file=out)
        return 1
    return 0
