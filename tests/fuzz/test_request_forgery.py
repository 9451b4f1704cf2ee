"""Request forgery through webhook URLs (taskapi.kit.outbound): nothing reaches the inside.

An "internal listener" (tests/outbound_servers.py) runs on 127.0.0.1 (and ::1) and counts every
connection. Every refusal below asserts it got none, and that the guard asked the network below
it (a RecordingConnector) for no connection at all; the positive controls prove the same URLs
do reach the listener when private networks are allowed, so those zeros mean something.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpcore
import pytest

from taskapi.kit.outbound import (
    ForbiddenDestination,
    GuardedBackend,
    OutboundResult,
    Resolver,
    address_refusal,
    check_url,
    outbound_client,
    post_bounded,
)
from tests.outbound_servers import (
    DictResolver,
    HttpServer,
    RebindingResolver,
    RecordingConnector,
    dribble,
    endless,
    make_certificates,
    ok,
    redirect,
    running,
    silent,
)

PUBLIC_V4 = "93.184.216.34"
# An address under test, never bound to.
ZERO = "0.0.0.0"  # noqa: S104
PUBLIC_V6 = "2606:4700:4700::1111"

FORBIDDEN = [
    (ZERO, "unspecified"),
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "RFC 1918"),
    ("10.255.255.255", "RFC 1918"),
    ("172.16.0.1", "RFC 1918"),
    ("172.31.255.255", "RFC 1918"),
    ("192.168.1.1", "RFC 1918"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.255", "CGNAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "metadata"),
    ("169.254.0.1", "link-local"),
    ("169.254.170.2", "link-local"),
    ("192.0.0.1", "IETF"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.88.99.1", "6to4 relay"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "RFC 1918"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::127.0.0.1", "reserved"),  # IPv4-compatible (deprecated)
    ("::ffff:0:127.0.0.1", "reserved"),  # IPv4-translated (SIIT)
    ("64:ff9b::127.0.0.1", "loopback"),  # NAT64
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b:1::8.8.8.8", "local-use NAT64"),
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:c0a8:101::1", "RFC 1918"),  # 6to4 of 192.168.1.1
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),  # Teredo, client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "IETF"),  # Teredo, client 8.8.8.8
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fd00:ec2::254", "metadata"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("4000::1", "outside 2000::/3"),
    ("not-an-address", "not an IP address"),
]
PUBLIC = [
    PUBLIC_V4,
    "8.8.8.8",
    "1.1.1.1",
    "11.0.0.1",
    "100.63.255.255",
    "100.128.0.0",
    "126.255.255.255",
    "128.0.0.1",
    "169.253.255.255",
    "169.255.0.1",
    "172.15.255.255",
    "172.32.0.1",
    "192.167.255.255",
    "192.169.0.1",
    "223.1.1.1",
    PUBLIC_V6,
    "2a00:1450:4001::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8",
    "2002:808:808::1",
]


@pytest.mark.parametrize(("address", "why"), FORBIDDEN)
def test_forbidden_addresses_are_refused_with_their_reason(address: str, why: str) -> None:
    reason = address_refusal(address)
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None
    assert address_refusal(ipaddress.ip_address(address)) is None


# Hosts that are loopback or 0.0.0.0 in some spelling, all reaching the listener when allowed.
LOCAL_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f.1",
    "0x7f000001",
    "017700000001",
    "127.1",
    "0",
    ZERO,
    "[::ffff:127.0.0.1]",
    "[::1]",
]
# And hosts elsewhere inside; nothing listens there (the RecordingConnector fails them).
INTERNAL_SPELLINGS = [
    "127.0.0.2",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.0.1",
    "100.64.0.1",
    "169.254.169.254",
    "0xa9.0xfe.0xa9.0xfe",
    "[::ffff:169.254.169.254]",
    "[::ffff:a9fe:a9fe]",
    "[fe80::1]",
    "[fd00::1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::1]",
]


@pytest.mark.parametrize(
    "url",
    [f"https://{host}/" for host in LOCAL_SPELLINGS + INTERNAL_SPELLINGS]
    + [
        "https://127.0.0.1./",
        "https://%31%32%37.0.0.1/",
        "https://[fe80::1%25eth0]/",
        "https://localhost/",
        "https://api.localhost./",
        "https://169.254.169.254/latest/",
    ],
)
def test_check_url_refuses_internal_literals(url: str) -> None:
    reason = check_url(url, require_https=True, allow_private=False)
    assert reason is not None
    assert check_url(url, require_https=True, allow_private=True) is None


@pytest.mark.parametrize(
    ("url", "require_https", "why"),
    [
        ("ftp://example.com/", False, "http or https"),
        ("/relative/path", False, "http or https"),
        ("http:///no-host", False, "absolute"),
        ("https://user:secret@example.com/", False, "credentials"),
        ("https://token@example.com/", False, "credentials"),
        ("http://example.com/", True, "https"),
        ("https://[::1/", False, "not a valid URL"),
        ("https://[nonsense]/", False, "not a valid"),
    ],
)
def test_check_url_shape(url: str, require_https: bool, why: str) -> None:
    for allow_private in (False, True):  # allowing private networks lifts none of these
        reason = check_url(url, require_https=require_https, allow_private=allow_private)
        assert reason is not None
        assert why in reason


@pytest.mark.parametrize(
    ("url", "require_https"),
    [
        ("https://example.com/hooks?x=1", True),
        ("https://8.8.8.8/", True),
        (f"https://[{PUBLIC_V6}]:8443/", True),
        ("https://bücher.de/", True),
        ("http://example.com/", False),
    ],
)
def test_check_url_accepts_public_urls(url: str, require_https: bool) -> None:
    assert check_url(url, require_https=require_https, allow_private=False) is None


@pytest.fixture
async def listener() -> AsyncIterator[HttpServer]:
    async with running(ok()) as server:
        yield server


async def post(
    url: str,
    *,
    allow: bool,
    connector: RecordingConnector | None = None,
    resolver: Resolver | None = None,
    seconds: float = 5.0,
) -> tuple[OutboundResult, float]:
    """One POST through a fresh outbound client: the result and the seconds it took."""
    started = time.monotonic()
    async with outbound_client(
        allow_private_networks=allow, connector=connector, resolver=resolver, timeout=seconds
    ) as http:
        result = await post_bounded(http, url, content=b"{}", headers={"X-Test": "1"})
    return result, time.monotonic() - started


def host_url(host: str, port: int) -> str:
    return f"http://{host}:{port}/hook"


@pytest.mark.parametrize("host", LOCAL_SPELLINGS)
async def test_local_spellings_reach_the_listener_when_allowed(
    host: str, listener: HttpServer
) -> None:
    """The positive control: without it every zero below could be a broken listener."""
    # The suite's machines have an IPv6 loopback; without one the [::1] zeros would prove nothing.
    assert listener.ipv6 or host != "[::1]", "no IPv6 loopback: the [::1] cases cannot be checked"
    connector = RecordingConnector()
    result, _ = await post(host_url(host, listener.port), allow=True, connector=connector)
    assert (result.status, result.body, result.error) == (200, b"internal", None)
    assert listener.accepted == 1
    assert len(connector.attempts) == 1


@pytest.mark.parametrize("host", LOCAL_SPELLINGS + INTERNAL_SPELLINGS)
async def test_internal_literals_are_refused_at_connect_time(
    host: str, listener: HttpServer
) -> None:
    connector = RecordingConnector()
    result, _ = await post(host_url(host, listener.port), allow=False, connector=connector)
    assert result.error is not None
    assert result.error.startswith("forbidden destination: ")
    assert result.status is None
    assert connector.attempts == []
    assert listener.accepted == 0


@pytest.mark.parametrize("host", ["2130706433", "[::ffff:127.0.0.1]", "0"])
async def test_the_default_network_is_guarded_too(host: str, listener: HttpServer) -> None:
    result, _ = await post(host_url(host, listener.port), allow=False)
    assert result.error.startswith("forbidden destination: ")
    assert listener.accepted == 0


NAMES = {
    "internal.test": ["127.0.0.1"],
    "zero.test": [ZERO],
    "metadata.test": ["169.254.169.254"],
    "private.test": ["10.1.2.3"],
    "v6.test": ["::1"],
    "mapped.test": ["::ffff:127.0.0.1"],
    "ula.test": ["fd00::1"],
    "mixed.test": [PUBLIC_V4, "127.0.0.1"],
    "mixed-first.test": ["127.0.0.1", PUBLIC_V4],
    "mixed6.test": [PUBLIC_V6, "fd00::1"],
}


@pytest.mark.parametrize("name", sorted(NAMES))
async def test_names_resolving_inside_are_refused(name: str, listener: HttpServer) -> None:
    resolver = DictResolver(NAMES)
    connector = RecordingConnector(resolver)
    result, _ = await post(
        host_url(name, listener.port), allow=False, connector=connector, resolver=resolver
    )
    assert result.error.startswith("forbidden destination: ")
    assert f"({name} resolves to it)" in result.error
    assert connector.attempts == []
    assert resolver.calls == {name: 1}
    assert listener.accepted == 0


async def test_a_name_is_connected_to_by_the_address_checked(listener: HttpServer) -> None:
    """Allowed, a name still goes to the resolved address (the listener) with its own Host."""
    resolver = DictResolver({"receiver.test": ["127.0.0.1"]})
    connector = RecordingConnector(resolver)
    url = host_url("receiver.test", listener.port)
    result, _ = await post(url, allow=True, connector=connector, resolver=resolver)
    assert result.status == 200
    assert connector.attempts == [("127.0.0.1", listener.port)]
    assert f"host: receiver.test:{listener.port}\r\n".encode() in listener.requests[0].lower()
    assert b"user-agent: taskapi-webhooks/1\r\n" in listener.requests[0].lower()


async def test_dns_rebinding_never_reaches_the_listener(listener: HttpServer) -> None:
    """Public when checked, loopback on any later lookup: the guard connects to what it
    checked (which is unreachable here) and refuses the loopback answer next time."""
    resolver = RebindingResolver(PUBLIC_V4, "127.0.0.1")
    connector = RecordingConnector(resolver)
    url = host_url("rebind.test", listener.port)
    async with outbound_client(
        allow_private_networks=False, resolver=resolver, connector=connector, timeout=2.0
    ) as http:
        first = await post_bounded(http, url, content=b"{}", headers={})
        second = await post_bounded(http, url, content=b"{}", headers={})
    assert first.error is not None
    assert first.error.startswith("connection failed")
    assert second.error is not None
    assert second.error.startswith("forbidden destination: ")
    assert connector.attempts == [(PUBLIC_V4, listener.port)]
    assert resolver.calls == 2
    assert listener.accepted == 0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_to_inside_are_not_followed(status: int, listener: HttpServer) -> None:
    target = f"http://127.0.0.1:{listener.port}/"
    async with running(redirect(status, target)) as receiver:
        result, _ = await post(f"http://127.0.0.1:{receiver.port}/", allow=True)
    assert result.status == status
    assert result.error is None
    assert len(receiver.requests) == 1
    assert listener.accepted == 0


async def test_only_a_bounded_body_is_read() -> None:
    total = 10 * 1024 * 1024
    async with running(endless(total)) as receiver:
        async with outbound_client(allow_private_networks=True) as http:
            started = time.monotonic()
            result = await post_bounded(
                http,
                f"http://127.0.0.1:{receiver.port}/",
                content=b"{}",
                headers={},
                max_body_bytes=1000,
            )
            elapsed = time.monotonic() - started
        await asyncio.wait_for(receiver.handled.wait(), 5)  # the sender gave up
    assert (result.status, result.error) == (200, None)
    assert result.body == b"x" * 1000
    assert elapsed < 3.0
    # The rest was never read: the sender was cut off long before the end.
    assert receiver.bytes_sent < total


async def test_a_receiver_that_never_answers_times_out() -> None:
    async with running(silent) as receiver:
        result, elapsed = await post(f"http://127.0.0.1:{receiver.port}/", allow=True, seconds=0.5)
    assert result.error == "timeout"
    assert result.status is None
    assert 0.4 <= elapsed < 3.0
    assert 400 <= result.duration_ms < 3000


async def test_a_dribbling_receiver_is_cut_off_by_the_deadline() -> None:
    """httpx's timeouts are per read: only post_bounded's deadline for the whole exchange
    stops a receiver that keeps sending a byte at a time."""
    async with running(dribble) as receiver:
        # Bounded here too, so that without the deadline this fails instead of hanging.
        result, elapsed = await asyncio.wait_for(
            post(f"http://127.0.0.1:{receiver.port}/", allow=True, seconds=0.5), 5
        )
    assert result.error == "timeout"
    assert 0.4 <= elapsed < 3.0


async def test_a_closed_port_is_connection_refused() -> None:
    with socket.socket() as sock:  # a port just free, with nothing listening
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    result, _ = await post(f"http://127.0.0.1:{closed}/", allow=True)
    assert result.error == "connection refused"


async def test_tls_verifies_the_name_not_the_address(tmp_path: Path) -> None:
    """The connection goes to 127.0.0.1, yet the server is asked for (SNI) and verified as
    receiver.test: the certificate covers only that name, so a client verifying the address
    it connected to would fail, as the IP-literal request below shows."""
    certificates = make_certificates("receiver.test")
    server_tls = certificates.server_context(tmp_path)
    resolver = DictResolver({"receiver.test": ["127.0.0.1"]})
    async with (
        running(ok(b"tls"), ssl_context=server_tls) as receiver,
        outbound_client(
            allow_private_networks=True,
            resolver=resolver,
            ssl_context=certificates.client_context(),
        ) as http,
    ):
        named = await post_bounded(
            http, f"https://receiver.test:{receiver.port}/", content=b"{}", headers={}
        )
        literal = await post_bounded(
            http, f"https://127.0.0.1:{receiver.port}/", content=b"{}", headers={}
        )
    assert (named.status, named.body, named.error) == (200, b"tls", None)
    assert receiver.sni[0] == "receiver.test"
    assert literal.status is None
    assert literal.error is not None
    assert literal.error.startswith("tls error")


async def test_unix_sockets_are_refused() -> None:
    backend = GuardedBackend(allow_private_networks=True)
    with pytest.raises(ForbiddenDestination, match="unix socket"):
        await backend.connect_unix_socket("/var/run/docker.sock")
    assert issubclass(ForbiddenDestination, httpcore.ConnectError)


async def test_post_bounded_reports_instead_of_raising() -> None:
    for url, prefix in [
        ("ftp://example.com/", "request failed"),
        ("http://unknown.test/", "connection failed: could not resolve unknown.test"),
    ]:
        result, _ = await post(url, allow=False, resolver=DictResolver({}))
        assert result.status is None
        assert result.error.startswith(prefix), result.error
