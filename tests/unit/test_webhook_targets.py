"""The webhook target policy as pure functions, and the guarded network backend with fakes."""

from __future__ import annotations

import ipaddress

import httpcore
import pytest

from dtq.core.webhooks.targets import (
    IPAddress,
    TargetRefused,
    address_refusal,
    check_host,
    check_url,
    parse_ip,
)
from dtq.core.webhooks.transport import GuardedBackend, PolicyRefused, checked_addresses, resolve
from dtq.errors import InvalidRequest
from dtq.settings import load_settings


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"), ("017700000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"), ("127.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
        ("0x7f.0.0.0x1", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"), ("0", "0.0.0.0"),
        ("0x0", "0.0.0.0"), ("3232235777", "192.168.1.1"), ("0xa9fea9fe", "169.254.169.254"),
        ("[::1]", "::1"), ("::1", "::1"), ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[0:0:0:0:0:ffff:7f00:1]", "::ffff:7f00:1"), ("8.8.8.8", "8.8.8.8"),
    ],
)  # fmt: skip
def test_every_numeric_notation_is_read_as_the_address_it_means(host: str, address: str) -> None:
    assert parse_ip(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "hooks.example.com.", "0x7f.example", "a1"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ip(host) is None


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.0.0.1", "127.0.0.256", "1.16777216", "08.0.0.1", "4294967296",
             "example.1", "0x100.0.0.1"],
)  # fmt: skip
def test_numeric_looking_hosts_that_are_no_address_are_refused(host: str) -> None:
    with pytest.raises(TargetRefused):
        check_host(host)


@pytest.mark.parametrize(
    ("address", "what"),
    [
        ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
        ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
        ("192.168.1.1", "private"), ("100.64.0.1", "shared (CGNAT)"),
        ("100.127.255.255", "shared (CGNAT)"), ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"), ("fc00::1", "unique-local"), ("fd12:3456::1", "unique-local"),
        ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("255.255.255.255", "reserved"),
        ("240.0.0.1", "reserved"), ("192.0.2.1", "reserved"), ("2001:db8::1", "reserved"),
        ("fec0::1", "site-local"),
        ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"), ("192.0.0.192", "cloud metadata"),
        # IPv6 forms of IPv4 addresses are judged by the IPv4 address
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"),
        ("::ffff:169.254.169.254", "cloud metadata"), ("::127.0.0.1", "loopback"),
        ("64:ff9b::7f00:1", "loopback"), ("2002:7f00:1::", "loopback"),
        ("2002:a9fe:a9fe::1", "cloud metadata"), ("fe80::1%eth0", "link-local"),
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused_with_what_they_are(address: str, what: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) == what


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.0", "172.32.0.1",
     "2606:4700:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8", "2002:808:808::1"],
)  # fmt: skip
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST", "localhost.", "api.localhost", "metadata.google.internal",
     "metadata.google.internal.", "metadata", "metadata.goog", "db.internal", "printer.local",
     "router.home.arpa", "instance-data"],
)  # fmt: skip
def test_local_and_metadata_names_are_refused_whatever_they_resolve_to(host: str) -> None:
    with pytest.raises(TargetRefused):
        check_host(host)


@pytest.mark.parametrize(
    "url",
    ["http://user:pw@example.com/", "https://user@example.com/", "http://:pw@example.com/",
     "http://user:pw@127.0.0.1/", "gopher://example.com/", "file:///etc/passwd",
     "dict://example.com:11211/", "ws://example.com/"],
)  # fmt: skip
def test_credentials_and_other_schemes_are_invalid_urls(url: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_url(url)
    assert info.value.details["field"] == "url"


# --- the guarded backend ----------------------------------------------------------------------


class FakeStream(httpcore.AsyncNetworkStream):
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records where it is asked to connect; refuses the hosts in `down`."""

    def __init__(self, down: frozenset[str] = frozenset()) -> None:
        self.connects: list[tuple[str, int]] = []
        self.down = down

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: object = None) -> httpcore.AsyncNetworkStream:  # fmt: skip
        self.connects.append((host, port))
        if host in self.down:
            raise httpcore.ConnectError("refused")
        return FakeStream()


def rebinding(*answers: list[str]):  # type: ignore[no-untyped-def]
    """A resolver that gives the next answer each time it is asked (a rebinding DNS server)."""
    queue = [[ipaddress.ip_address(a) for a in answer] for answer in answers]
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[IPAddress]:
        asked.append(host)
        return queue.pop(0)

    return resolve, asked


async def test_connects_to_the_checked_address_and_resolves_once() -> None:
    resolve, asked = rebinding(["93.184.215.14"], ["127.0.0.1"])
    inner = RecordingBackend()
    backend = GuardedBackend(resolve, inner=inner)
    await backend.connect_tcp("hooks.example.com", 443)
    # The pinned public address, not the name (which would now resolve to 127.0.0.1).
    assert inner.connects == [("93.184.215.14", 443)]
    assert asked == ["hooks.example.com"]


async def test_a_private_answer_refuses_before_any_connection() -> None:
    resolve, _ = rebinding(["127.0.0.1"])
    inner = RecordingBackend()
    with pytest.raises(PolicyRefused):
        await GuardedBackend(resolve, inner=inner).connect_tcp("hooks.example.com", 80)
    assert inner.connects == []


async def test_one_private_address_among_public_ones_refuses_the_name() -> None:
    resolve, _ = rebinding(["93.184.215.14", "10.0.0.5"])
    inner = RecordingBackend()
    with pytest.raises(PolicyRefused):
        await GuardedBackend(resolve, inner=inner).connect_tcp("hooks.example.com", 80)
    assert inner.connects == []


async def test_literal_and_named_local_targets_are_refused_without_resolving() -> None:
    resolve, asked = rebinding()
    inner = RecordingBackend()
    backend = GuardedBackend(resolve, inner=inner)
    for host in ("127.0.0.1", "2130706433", "::1", "localhost", "metadata.google.internal"):
        with pytest.raises(PolicyRefused):
            await backend.connect_tcp(host, 80)
    assert inner.connects == [] and asked == []


async def test_the_next_checked_address_when_one_is_down() -> None:
    resolve, _ = rebinding(["93.184.215.14", "2606:4700::1"])
    inner = RecordingBackend(down=frozenset({"93.184.215.14"}))
    await GuardedBackend(resolve, inner=inner).connect_tcp("hooks.example.com", 80)
    assert inner.connects == [("93.184.215.14", 80), ("2606:4700::1", 80)]


async def test_allowed_private_networks_still_connect_to_the_resolved_address() -> None:
    resolve, _ = rebinding(["127.0.0.1"])
    inner = RecordingBackend()
    await GuardedBackend(resolve, allow_private=True, inner=inner).connect_tcp("hooks.test", 80)
    assert inner.connects == [("127.0.0.1", 80)]


async def test_checked_addresses_of_a_literal_need_no_resolver() -> None:
    resolve, asked = rebinding()
    assert await checked_addresses("8.8.8.8", 80, resolve) == [ipaddress.ip_address("8.8.8.8")]
    assert asked == []
    with pytest.raises(TargetRefused):
        await checked_addresses("0x7f000001", 80, resolve)


def test_the_opt_out_is_off_by_default_and_read_from_the_environment() -> None:
    assert load_settings(environ={}).webhook_allow_private_networks is False
    on = load_settings(environ={"DTQ_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"})
    assert on.webhook_allow_private_networks is True


@pytest.mark.parametrize("host", ["a..example.com", f"{'x' * 64}.example.com", ".example.com"])
async def test_a_name_idna_refuses_does_not_resolve(host: str) -> None:
    """Schemathesis registered such a URL (private networks allowed, so no check at
    registration) and its delivery's UnicodeError from getaddrinfo stopped the server."""
    with pytest.raises(OSError, match="not a valid host name"):
        await resolve(host, 80)
    with pytest.raises(httpcore.ConnectError, match="could not resolve host"):
        await GuardedBackend(allow_private=True, inner=RecordingBackend()).connect_tcp(host, 80)
