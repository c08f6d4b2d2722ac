"""Where a webhook may deliver: the URL rules and the address policy, as pure functions.

A webhook URL is chosen by an API user, but the request is made by the server, from inside its
network. Without a policy, a webhook reaches whatever the server can reach: loopback services,
the private network, the cloud metadata endpoint (credentials), and the delivery history
reports what answered. So a target must be a public unicast address, unless the operator says
otherwise (`webhook_allow_private_networks`, for local setups). The same rules run twice: at
registration (on the URL and what its host resolves to) and at every connection the delivery
loop opens (`dtq.core.webhooks.transport`), against the very address it connects to, so a name that
resolves differently later (DNS rebinding) gains nothing.

The address lists are written out here, not taken from `ipaddress.is_global`: what that property
covers has changed between Python versions (3.11 calls multicast and 192.0.0.192 global).

Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import httpx

from dtq.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_SETTING_ENV = "DTQ_WEBHOOK_ALLOW_PRIVATE_NETWORKS"

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# Cloud metadata endpoints (AWS/GCP/Azure/OpenStack/DigitalOcean, AWS over IPv6, Alibaba,
# Oracle). The ranges below refuse them already; they are named so the reason says so.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200",
              "192.0.0.192")
)  # fmt: skip
# Names that mean "this machine" or "the local network" whatever DNS says, and the metadata
# services' names (their resolvers answer them with link-local addresses).
_LOCAL_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "metadata.goog",
                          "instance-data", "instance-data.ec2.internal"})  # fmt: skip
_LOCAL_SUFFIXES = (".localhost", ".internal", ".local", ".home.arpa")

# (network, what it is): the IANA special-purpose registries, as far as a webhook cares.
_V4_REFUSED: tuple[tuple[_V4, str], ...] = tuple(
    (_V4(net), what)
    for net, what in (
        ("0.0.0.0/8", "unspecified"), ("10.0.0.0/8", "private"),
        ("100.64.0.0/10", "shared (CGNAT)"), ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"), ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"), ("192.0.2.0/24", "reserved"),
        ("192.88.99.0/24", "reserved"), ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "reserved"), ("198.51.100.0/24", "reserved"),
        ("203.0.113.0/24", "reserved"), ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # includes the broadcast address 255.255.255.255
    )
)  # fmt: skip
_V6_GLOBAL_UNICAST = _V6("2000::/3")  # everything else is special or unallocated
_V6_REFUSED: tuple[tuple[_V6, str], ...] = tuple(
    (_V6(net), what)
    for net, what in (
        ("::/128", "unspecified"), ("::1/128", "loopback"), ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local"), ("fc00::/7", "unique-local"), ("ff00::/8", "multicast"),
        ("2001::/23", "reserved"), ("2001:db8::/32", "reserved"), ("3fff::/20", "reserved"),
        ("5f00::/16", "reserved"), ("64:ff9b:1::/48", "reserved"), ("100::/64", "reserved"),
    )
)  # fmt: skip
# IPv6 forms that carry an IPv4 address a packet may end up at: judged by that address.
_V4_COMPAT = _V6("::/96")
_NAT64 = _V6("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)


class TargetRefused(Exception):
    """A webhook target outside the policy; `reason` is safe to show to the operator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The shape check_url accepts, as a pattern (the OpenAPI document shows it): a host name of
# unreserved characters or a bracketed IPv6 address (RFC 3986's grammar), a port up to 65535,
# then printable ASCII. check_url enforces it last, so nothing the document calls invalid is
# accepted, and everything it calls valid passes the other checks too.
_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = f"({_H16}:{_H16}|{_OCTET}(\\.{_OCTET}){{3}})"
_IPV6 = "|".join([
    f"({_H16}:){{6}}{_LS32}",
    f"::({_H16}:){{5}}{_LS32}",
    f"({_H16})?::({_H16}:){{4}}{_LS32}",
    f"(({_H16}:){{0,1}}{_H16})?::({_H16}:){{3}}{_LS32}",
    f"(({_H16}:){{0,2}}{_H16})?::({_H16}:){{2}}{_LS32}",
    f"(({_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
    f"(({_H16}:){{0,4}}{_H16})?::{_LS32}",
    f"(({_H16}:){{0,5}}{_H16})?::{_H16}",
    f"(({_H16}:){{0,6}}{_H16})?::",
])  # fmt: skip
_PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
WEBHOOK_URL_PATTERN = (
    f"^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9._~-]+|\\[({_IPV6})\\])(:{_PORT})?([/?#][!-~]*)?$"
)
_URL_SHAPE = re.compile(WEBHOOK_URL_PATTERN)


def _bad_url(reason: str) -> InvalidRequest:
    return InvalidRequest(f"url must be an absolute http or https URL: {reason}",
                          field="url", reason=reason)  # fmt: skip


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host and no credentials, or INVALID_REQUEST naming `url`.

    Network policy is separate (`check_host`, then the resolved addresses).
    """
    if url != url.strip() or any(c.isspace() or ord(c) < 32 for c in url):
        raise _bad_url("contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a bad port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise _bad_url(str(exc) or "not a URL") from None
    if parts.scheme not in ("http", "https"):
        raise _bad_url(
            f"scheme {parts.scheme!r} is not http or https" if parts.scheme else "no scheme"
        )
    # `netloc` keeps what `hostname` drops: an "@" means a user (and maybe a password) are in it.
    if "@" in parts.netloc:
        raise InvalidRequest("url must not contain credentials (user:password@); "
                             "authenticate deliveries with the webhook's secret",
                             field="url", reason="credentials in URL")  # fmt: skip
    if not parts.hostname:
        raise _bad_url("no host")
    if not _URL_SHAPE.match(url):
        raise _bad_url(
            "the host may have only letters, digits and . _ ~ - (an international name in "
            "its xn-- form) or be a bracketed IPv6 address, the rest only printable ASCII "
            "(percent-encode others)"
        )
    return url


def url_host(url: str) -> str:
    """The host of a URL `check_url` accepted, lower case, without brackets."""
    host = urlsplit(url).hostname
    assert host is not None
    return host


def parse_ip(host: str) -> IPAddress | None:
    """The address a host names literally, in any notation a resolver accepts, else None.

    Besides the usual forms (`127.0.0.1`, `[::1]`, `::ffff:127.0.0.1`) the C resolver takes
    `inet_aton`'s: one to four parts, each decimal, hex (`0x7f`) or octal (`0177`), the last
    filling the remaining bytes (`2130706433`, `0x7f000001`, `127.1`, `0177.0.0.1`).
    Raises TargetRefused for a host that looks numeric but is no valid address (`1.2.3.4.5`,
    `08.1`, `256.1.1.1`): no public name ends in a number, and resolvers differ on such forms.
    """
    name = host.strip("[]").rstrip(".") if host.startswith("[") else host.rstrip(".")
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        pass
    labels = name.split(".")
    if not _NUMERIC_LABEL.fullmatch(labels[-1]):
        return None  # a name (IPv6 literals were handled above)
    if len(labels) > 4 or not all(_NUMERIC_LABEL.fullmatch(p) for p in labels):
        raise TargetRefused("host looks like a numeric address but is not a valid one")
    values: list[int] = []
    for part in labels:
        lower = part.lower()
        if lower.startswith("0x"):
            values.append(int(lower[2:] or "0", 16))
        elif len(part) > 1 and part.startswith("0"):
            if not set(part) <= set("01234567"):
                raise TargetRefused("host looks like a numeric address but is not a valid one")
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    last_bits = 8 * (4 - len(head))
    if any(v > 255 for v in head) or last >= 1 << last_bits:
        raise TargetRefused("host looks like a numeric address but is not a valid one")
    number = last
    for i, v in enumerate(head):
        number |= v << (24 - 8 * i)
    return ipaddress.IPv4Address(number)


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64 or (addr in _V4_COMPAT and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def address_refusal(addr: IPAddress) -> str | None:
    """Why a webhook may not connect to `addr` ("loopback", "private", ...), or None."""
    if addr in METADATA_ADDRESSES:
        return "cloud metadata"
    if isinstance(addr, ipaddress.IPv6Address):
        addr = ipaddress.IPv6Address(addr.packed)  # drop any %scope: the address decides
        embedded = _embedded_v4(addr)
        if embedded is not None:
            return address_refusal(embedded)
        for net6, what in _V6_REFUSED:
            if addr in net6:
                return what
        return None if addr in _V6_GLOBAL_UNICAST else "reserved"
    for net4, what in _V4_REFUSED:
        if addr in net4:
            return what
    return None


def check_address(addr: IPAddress) -> None:
    """Raise TargetRefused unless `addr` is a public unicast address."""
    what = address_refusal(addr)
    if what is not None:
        raise TargetRefused(f"{what} address")


def check_host(host: str) -> IPAddress | None:
    """Judge what the host alone tells: a literal address (returned, checked) or a local or
    metadata name (refused). None: a name whose addresses must be resolved and checked."""
    addr = parse_ip(host)
    if addr is not None:
        check_address(addr)
        return addr
    name = host.rstrip(".").lower()
    if name in _LOCAL_NAMES or name.endswith(_LOCAL_SUFFIXES):
        raise TargetRefused("local or cloud metadata host name")
    return None


def refused_at_registration(reason: str) -> InvalidRequest:
    """The 400 for a URL outside the policy, telling the operator how local setups opt out."""
    return InvalidRequest(
        f"url is not a public address ({reason}): webhooks may not target loopback, private, "
        f"link-local, multicast, reserved or cloud metadata addresses; for local setups set "
        f"{ALLOW_SETTING_ENV}=true",
        field="url",
        reason=f"not a public address: {reason}",
    )
