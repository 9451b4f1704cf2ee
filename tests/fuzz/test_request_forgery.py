"""Request forgery through webhook URLs: which addresses and URLs are refused
(taskapi.kit.addresses), range by range and spelling by spelling."""

from __future__ import annotations

import ipaddress

import pytest

from taskapi.kit.addresses import (
    address_refusal,
    check_url,
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


# Hosts that are loopback or 0.0.0.0 in some spelling.
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
# And hosts elsewhere inside.
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
