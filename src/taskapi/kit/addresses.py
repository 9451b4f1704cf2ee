"""Which addresses a user-chosen URL may reach, the save-time check of such a URL, and the
resolvers that turn its host into addresses (taskapi.kit.outbound connects to what they return).

`ipaddress.is_global` alone is not enough: before Python 3.12.4 it calls fec0::/10, ::/8 and
6to4/NAT64 addresses embedding 127.0.0.1 global. So the ranges are named here, one by one, and
`is_global` is only the last net for whatever the tables miss.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from typing import Protocol
from urllib.parse import unquote

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# First match wins, so the narrower ranges come before the ranges holding them.
_V4_RANGES: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), what)
    for net, what in (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT, 100.64.0.0/10)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.169.254/32", "the cloud metadata service"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments (192.0.0.0/24)"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking (198.18.0.0/15)"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
    )
)

_V6_RANGES: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), what)
    for net, what in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        # ::ffff:0:0/96 (IPv4-mapped) and 64:ff9b::/96 (NAT64) are judged by the IPv4 address
        # they carry before this table is read; the rest of ::/8 (IPv4-compatible, SIIT) is not
        # routable on the internet.
        ("64:ff9b:1::/48", "local-use NAT64 (64:ff9b:1::/48)"),
        ("::/8", "reserved (::/8)"),
        ("100::/64", "discard-only (100::/64)"),
        ("2001:db8::/32", "documentation (2001:db8::/32)"),
        # Teredo (2001::/32) is in here: a tunnel endpoint, never a webhook receiver.
        ("2001::/23", "IETF protocol assignments (2001::/23)"),
        ("3fff::/20", "documentation (3fff::/20)"),
        ("5f00::/16", "segment routing (5f00::/16)"),
        ("fd00:ec2::254/128", "the cloud metadata service"),
        ("fc00::/7", "unique local (fc00::/7)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (fec0::/10)"),
        ("ff00::/8", "multicast"),
    )
)
# The only IPv6 unicast space allocated for the internet so far.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_refusal(ip: str | IPAddress) -> str | None:
    """Why a connection to `ip` must not be made ("127.0.0.1 is loopback"), or None when it
    is a public address. An IPv6 address carrying an IPv4 one (IPv4-mapped, NAT64, 6to4,
    Teredo) is refused whenever the IPv4 address would be."""
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return f"{ip!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_refusal(ip)
    embedded = _embedded_v4(ip)
    if embedded is not None:
        reason = _v4_refusal(embedded)
        if reason is not None:
            return f"{ip} carries {reason}"
        if ip.ipv4_mapped is not None or ip in _NAT64:
            # These reach exactly the IPv4 address they carry, which is public.
            return None
    for network, what in _V6_RANGES:
        if ip in network:
            return f"{ip} is {what}"
    if ip not in _V6_GLOBAL_UNICAST:
        return f"{ip} is reserved (outside 2000::/3)"
    if ip.sixtofour is None and not ip.is_global:
        return f"{ip} is not globally routable"
    return None


def _v4_refusal(ip: ipaddress.IPv4Address) -> str | None:
    for network, what in _V4_RANGES:
        if ip in network:
            return f"{ip} is {what}"
    if not ip.is_global:
        return f"{ip} is not globally routable"
    return None


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one tunnels or translates to, if it is of such a kind."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client; the server half is judged as part of 2001::/32
    return None


# Characters of any IPv4 spelling inet_aton accepts: 127.0.0.1, 2130706433, 0x7f.1, 0177.1.
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")


def host_literal(host: str) -> IPAddress | None:
    """The address an IP-literal host stands for, in any spelling the system resolver turns
    into one without asking DNS (decimal, octal, hex, shortened IPv4); None for a name."""
    host = unquote(host).lower()
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    numeric = host.removesuffix(".")
    if not numeric or not _NUMERIC_HOST.fullmatch(numeric):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(numeric))
    except OSError:
        return None


def check_url(url: str, *, require_https: bool, allow_private: bool) -> str | None:
    """Why `url` cannot be a webhook URL, or None. Names are judged when connecting (what they
    resolve to can change); only IP literals and the loopback names of RFC 6761 are judged
    here, so an obviously internal URL is refused when it is saved."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        return f"not a valid URL: {exc}"
    if parsed.scheme not in ("http", "https"):
        return "the URL must be http or https"
    if not parsed.is_absolute_url or not parsed.host:
        return "the URL must be absolute, with a host"
    if parsed.userinfo:
        return "the URL must not carry credentials (user:password@)"
    if require_https and parsed.scheme != "https":
        return "the URL must be https"
    if allow_private:
        return None
    name = unquote(parsed.host).lower().removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return f"{name} is loopback"
    literal = host_literal(parsed.host)
    if literal is None:
        if ":" in parsed.host:
            return f"{parsed.host} is not a valid IPv6 address"
        return None
    return address_refusal(literal)


class Resolver(Protocol):
    """Turns a host into the IP addresses (as strings) a connection may go to."""

    async def resolve(self, host: str, port: int) -> list[str]: ...


class SystemResolver:
    """The operating system's resolver, through the event loop (getaddrinfo in its executor),
    so a slow DNS server never blocks the loop."""

    async def resolve(self, host: str, port: int) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        return [str(info[4][0]) for info in infos]
