"""The webhook policy at the network: resolve once, check every address, connect to a checked one.

Checking a name at registration is not enough: its DNS answer can change afterwards (DNS
rebinding), and the resolver the HTTP client uses could give another answer than the one that was
checked. So the delivery client's connections go through `GuardedBackend`, an httpcore network
backend: for each new connection it resolves the host itself, refuses the connection if any
address is outside the policy, and connects to the checked address (an IP literal, so nothing
resolves it again). TLS and the `Host` header are untouched: httpcore starts TLS with the URL's
host name as SNI and for the certificate check, and the request carries the URL's host.

Redirects are never followed (`follow_redirects=False`): a 3xx is a failed attempt.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx
import trio

from dtq.core.webhooks.targets import (
    IPAddress,
    TargetRefused,
    check_address,
    check_host,
    parse_ip,
    url_host,
)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

REFUSED_ERROR = "refused: the target address is not public"  # what the delivery history shows


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (TCP), in the resolver's order; OSError if none, or
    if `host` is no valid name.

    trio runs getaddrinfo in a thread, so the loop never blocks; callers bound it in time.
    """
    literal = parse_ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:  # IDNA refuses the name (an empty or over-long label)
        raise OSError(f"{host!r} is not a valid host name: {exc}") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        addr = parse_ip(str(sockaddr[0]))
        if addr is not None and addr not in found:
            found.append(addr)
    if not found:
        raise OSError(f"{host} has no address")
    return found


async def checked_addresses(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    """The addresses of `host`, each within the policy; TargetRefused if any is not."""
    literal = check_host(host)
    if literal is not None:
        return [literal]
    addresses = await resolver(host, port)
    for addr in addresses:  # all of them: a client may use any, so one bad one refuses the name
        check_address(addr)
    return addresses


async def check_registration(url: str, resolver: Resolver, timeout_s: float) -> None:
    """Registration's check of a URL `check_url` accepted: TargetRefused, or OSError when the
    host does not resolve within `timeout_s`."""
    parts = httpx.URL(url)
    with trio.move_on_after(timeout_s):
        await checked_addresses(url_host(url), parts.port or _default_port(parts.scheme), resolver)
        return
    raise OSError(f"name resolution took longer than {timeout_s:g} s")


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


class PolicyRefused(httpcore.ConnectError):
    """A connection the policy refused (httpx reports it as ConnectError, with this as cause)."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections only to addresses it resolved and checked itself."""

    def __init__(
        self,
        resolver: Resolver = resolve,
        *,
        allow_private: bool = False,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._inner = inner if inner is not None else httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            try:
                if self._allow_private:
                    addresses = await self._resolver(host, port)
                else:
                    addresses = await checked_addresses(host, port, self._resolver)
            except TargetRefused as exc:
                raise PolicyRefused(exc.reason) from None
            except OSError as exc:
                raise httpcore.ConnectError(f"could not resolve host: {exc}") from None
        if scope.cancelled_caught:
            raise httpcore.ConnectTimeout("name resolution timed out")
        last: Exception | None = None
        for addr in addresses:  # happy-eyeballs-lite: the next address if one is unreachable
            try:
                return await self._inner.connect_tcp(
                    str(addr), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise PolicyRefused("unix sockets are not webhook targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool opening connections through `backend`.

    httpx has no parameter for the network backend, so the pool it built is replaced by the
    same pool with ours (httpcore's `network_backend` is public API; httpx's `_pool` is not,
    and the delivery tests fail if that ever changes).
    """

    def __init__(self, backend: httpcore.AsyncNetworkBackend, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


def is_policy_refusal(exc: BaseException) -> bool:
    """Whether an httpx error came from the policy (its cause is a PolicyRefused)."""
    return isinstance(exc, httpx.ConnectError) and isinstance(exc.__cause__, PolicyRefused)
