"""The target policy through the API: refused at registration (400 naming `url`), refused again
at delivery against the address actually connected to, and the opt-out for local setups.

The server runs in process with the policy on (`webhook_allow_private_networks=False`, the
default); `fake_dns` decides what host names resolve to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from dtq.core.webhooks import delivery as webhook_delivery
from dtq.core.webhooks.transport import REFUSED_ERROR

from .webhook_support import FakeDNS, Received, Reply, Server, in_process, run_receiver

P = "/api/v1/webhooks"
STRICT = {"webhook_allow_private_networks": False}
PUBLIC = "93.184.215.14"  # stands for any public address; nothing connects to it here

# Finding 2's URLs, and the other notations of the same places.
REFUSED_URLS = [
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
    "http://metadata.google.internal/computeMetadata/v1/", "http://127.0.0.1:22/",
    "http://localhost:6379/", "http://[::1]/", "http://0.0.0.0/", "http://10.0.0.1/",
    "http://2130706433/", "http://0x7f000001/", "http://0177.0.0.1/", "http://127.1/",
    "http://127.0.0.1./", "http://LOCALHOST/", "http://api.localhost/", "http://[::]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[::ffff:a9fe:a9fe]/",
    "http://[64:ff9b::7f00:1]/", "http://172.16.0.1/", "http://192.168.0.1/",
    "http://100.64.0.1/", "http://169.254.0.1/", "http://[fe80::1]/", "http://[fc00::1]/",
    "http://224.0.0.1/", "http://[ff02::1]/", "http://255.255.255.255/", "http://240.0.0.1/",
    "https://0xa9fea9fe/latest/", "http://metadata/", "http://1.2.3.4.5/",
    # names whose DNS answer is not public (fake_dns below)
    "http://loopback.example.com/", "https://private.example.com:8443/x",
    "http://mixed.example.com/",
]  # fmt: skip
# httpx itself refuses these as URLs (a dotted IPv4 with a bad part): 400 before the policy.
UNPARSEABLE = {"http://0177.0.0.1/"}
DNS = {
    "loopback.example.com": ["127.0.0.1"],
    "private.example.com": ["10.1.2.3"],
    "mixed.example.com": [PUBLIC, "fd00::1"],  # one bad address is enough
    "public.example.com": [PUBLIC, "2606:4700::1111"],
}


def _error(reply: Any) -> dict[str, Any]:
    assert reply["status"] == "error", reply
    error: dict[str, Any] = reply["error"]
    return error


@pytest.fixture
async def strict(tmp_path: Path, fake_dns: FakeDNS) -> Any:
    fake_dns.answers.update(DNS)
    async with in_process(tmp_path / "data", **STRICT) as running:
        yield running


@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_non_public_targets_are_refused_at_registration(strict: Server, url: str) -> None:
    status, reply = await strict.admin.call("POST", P, {"url": url, "events": ["*"]})
    assert status == 400, reply
    error = _error(reply)
    assert error["code"] == "INVALID_REQUEST" and error["details"]["field"] == "url"
    if url in UNPARSEABLE:
        assert error["details"]["reason"].startswith("Invalid IPv4 address")
    else:
        assert "not a public address" in error["details"]["reason"]
        assert "DTQ_WEBHOOK_ALLOW_PRIVATE_NETWORKS" in error["message"]
    assert await strict.admin.ok("GET", P) == []


@pytest.mark.parametrize(
    "url", ["http://user:pw@public.example.com/", "https://token@93.184.215.14/"]
)
async def test_urls_with_credentials_are_refused(strict: Server, url: str) -> None:
    status, reply = await strict.admin.call("POST", P, {"url": url, "events": ["*"]})
    assert status == 400 and _error(reply)["details"] == {
        "field": "url",
        "reason": "credentials in URL",
    }


async def test_public_targets_are_accepted(strict: Server, fake_dns: FakeDNS) -> None:
    for url in (f"http://{PUBLIC}/hook", "https://public.example.com/hook",
                "https://[2606:4700::1111]/"):  # fmt: skip
        await strict.admin.ok("POST", P, {"url": url, "events": ["*"]}, status=201)
    assert "public.example.com" in fake_dns.asked


@pytest.mark.parametrize(
    "url", ["https://nowhere.example.com/", "http://a..example.com/", f"http://{'x' * 64}.io/"]
)
async def test_an_unresolvable_host_is_refused(strict: Server, url: str) -> None:
    status, reply = await strict.admin.call("POST", P, {"url": url, "events": ["*"]})
    assert status == 400
    assert _error(reply)["details"] == {"field": "url", "reason": "host does not resolve"}


async def test_registration_waits_for_dns_a_bounded_time(
    strict: Server, fake_dns: FakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hangs(*args: object) -> list[Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    monkeypatch.setattr(fake_dns, "getaddrinfo", hangs)
    monkeypatch.setattr(webhook_delivery, "REGISTRATION_RESOLVE_S", 0.2)
    with trio.fail_after(5):
        status, reply = await strict.admin.call(
            "POST", P, {"url": "https://slow.example.com/", "events": ["*"]}
        )
    assert status == 400 and _error(reply)["details"]["reason"] == "host does not resolve"


async def test_credentials_are_refused_even_when_private_networks_are_allowed(
    server: Server,
) -> None:
    status, reply = await server.admin.call(
        "POST", P, {"url": "http://user:pw@127.0.0.1:9/", "events": ["*"]}
    )
    assert status == 400 and _error(reply)["details"]["field"] == "url"


# --- at delivery ---------------------------------------------------------------------------


async def _create_task(server: Server) -> None:
    await server.admin.ok("POST", "/api/v1/tasks", {"name": "job"}, status=201)


def _refused(row: dict[str, Any]) -> None:
    assert row["status"] == "failed", row
    for attempt in row["history"]:
        # No status code, no connect error: nothing tells what is or is not listening there.
        assert attempt["status_code"] is None and attempt["error"] == REFUSED_ERROR


async def test_a_rebound_name_is_refused_at_delivery_and_never_connected(
    tmp_path: Path, fake_dns: FakeDNS
) -> None:
    """Public at registration, 127.0.0.1 when the delivery connects (DNS rebinding)."""
    fake_dns.answers["rebind.example.com"] = [PUBLIC]
    async with run_receiver() as receiver, in_process(tmp_path / "data", **STRICT) as server:
        url = f"http://rebind.example.com:{receiver.port}/hook"
        hook = await server.admin.ok("POST", P, {"url": url, "events": ["task.created"]},
                                     status=201)  # fmt: skip
        fake_dns.answers["rebind.example.com"] = ["127.0.0.1"]
        await _create_task(server)
        [row] = await server.wait_settled(hook["id"], 1)
        _refused(row)
        assert row["attempts"] == 3  # webhook_max_attempts in the tests: each one checked again
        assert receiver.connections == 0 and receiver.requests == []
    assert fake_dns.asked.count("rebind.example.com") == 1 + 3


async def test_a_target_registered_while_allowed_is_refused_once_the_policy_is_on(
    tmp_path: Path,
) -> None:
    async with run_receiver() as receiver:
        async with in_process(tmp_path / "data", webhook_allow_private_networks=True) as local:
            hook = await local.admin.ok(
                "POST", P, {"url": receiver.url, "events": ["task.created"]}, status=201
            )
        async with in_process(tmp_path / "data", **STRICT) as server:
            await _create_task(server)
            [row] = await server.wait_settled(hook["id"], 1)
            _refused(row)
            assert receiver.connections == 0


async def test_when_allowed_the_resolved_address_is_used_and_host_kept(
    server: Server, fake_dns: FakeDNS
) -> None:
    """The opt-out still goes through the same resolve-then-connect path: the request reaches
    the address DNS gave, with the URL's host in the Host header."""
    fake_dns.answers["hooks.test"] = ["127.0.0.1"]
    async with run_receiver() as receiver:
        url = f"http://hooks.test:{receiver.port}/hook"
        await server.admin.ok("POST", P, {"url": url, "events": ["task.created"]}, status=201)
        await _create_task(server)
        await receiver.wait_count(1)
        assert receiver.requests[0].headers["host"] == f"hooks.test:{receiver.port}"


async def test_redirects_are_not_followed(server: Server) -> None:
    async with run_receiver() as target:

        async def redirect(request: Received) -> Reply:
            return 307, [("Location", target.url)]

        async with run_receiver(redirect) as receiver:
            hook = await server.admin.ok(
                "POST", P, {"url": receiver.url, "events": ["task.created"]}, status=201
            )
            await _create_task(server)
            [row] = await server.wait_settled(hook["id"], 1)
        assert row["status"] == "failed"
        assert [a["status_code"] for a in row["history"]] == [307, 307, 307]
        assert len(receiver.requests) == 3 and target.requests == []


async def test_a_host_name_idna_refuses_fails_its_deliveries_not_the_server(
    server: Server,
) -> None:
    """Private networks allowed, so nothing resolves at registration. getaddrinfo's IDNA step
    raised UnicodeError for the empty label at delivery, and that stopped the whole server
    (schemathesis found it)."""
    hook = await server.admin.ok(
        "POST", P, {"url": "http://a..example.com/hook", "events": ["task.created"]}, status=201
    )
    await _create_task(server)
    [row] = await server.wait_settled(hook["id"], 1)
    assert row["status"] == "failed"
    assert all("not a valid host name" in a["error"] for a in row["history"]), row
    await _create_task(server)  # and the server goes on


async def test_whatever_a_delivery_raises_fails_that_attempt_only(
    server: Server, fake_dns: FakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kw: object) -> list[Any]:
        raise RuntimeError("resolver bug")

    monkeypatch.setattr(fake_dns, "getaddrinfo", broken)
    hook = await server.admin.ok(
        "POST", P, {"url": "http://odd.example.com/hook", "events": ["task.created"]}, status=201
    )
    await _create_task(server)
    [row] = await server.wait_settled(hook["id"], 1)
    assert row["status"] == "failed"
    assert all(a["error"] == "RuntimeError: resolver bug" for a in row["history"]), row
    await _create_task(server)  # and the server goes on
