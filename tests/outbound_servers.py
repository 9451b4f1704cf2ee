"""Servers and stand-ins for the request-forgery tests (tests/fuzz/test_request_forgery.py).

`HttpServer` is a tiny HTTP/1.1 server on loopback that counts every connection and request
reaching it: as the "internal listener" the guard must keep requests away from, and as the
receivers that redirect, stream without end or never answer. `DictResolver` is DNS as a test
wants it. `RecordingConnector` stands in for the network below the guard and records every
connection the guard asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpcore
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from taskapi.kit.outbound import Resolver, SystemResolver

Answer = Callable[["HttpServer", asyncio.StreamWriter], Awaitable[None]]


@dataclass
class HttpServer:
    """Answers every request with `answer`; `accepted` counts connections, `requests` keeps
    each request head (bytes), `sni` the server names TLS clients sent."""

    answer: Answer
    port: int = 0
    ipv6: bool = False
    accepted: int = 0
    requests: list[bytes] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    bytes_sent: int = 0
    handled: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.requests.append(head)
            # The body too: closing with unread bytes would reset the connection under the
            # client before it reads the answer.
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            await self.answer(self, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            self.handled.set()
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


@contextlib.asynccontextmanager
async def running(
    answer: Answer, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[HttpServer]:
    """An HttpServer on 127.0.0.1 and, when the machine has IPv6, on ::1 at the same port."""
    server = HttpServer(answer)
    if ssl_context is not None:
        ssl_context.sni_callback = lambda _obj, name, _ctx: server.sni.append(name)
    v4 = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=ssl_context)
    server.port = v4.sockets[0].getsockname()[1]
    listeners = [v4]
    with contextlib.suppress(OSError):
        listeners.append(await asyncio.start_server(server.handle, "::1", server.port))
        server.ipv6 = True
    try:
        yield server
    finally:
        for listener in listeners:
            listener.close()
        await server.stop()
        for listener in listeners:
            await listener.wait_closed()


def ok(body: bytes = b"internal") -> Answer:
    async def answer(server: HttpServer, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    return answer


def redirect(status: int, location: str) -> Answer:
    async def answer(server: HttpServer, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
            % (status, location.encode())
        )
        await writer.drain()

    return answer


def endless(total: int, chunk: int = 65536) -> Answer:
    """A 200 declaring `total` bytes and writing them until the client goes away
    (`bytes_sent` says how far it got)."""

    async def answer(server: HttpServer, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * chunk
        while server.bytes_sent < total:
            writer.write(block)
            await writer.drain()
            server.bytes_sent += chunk

    return answer


async def dribble(server: HttpServer, writer: asyncio.StreamWriter) -> None:
    """Answers one header byte every 0.1 s, for ever: no single read ever times out."""
    writer.write(b"HTTP/1.1 200 OK\r\n")
    while True:
        writer.write(b"X")
        await writer.drain()
        await asyncio.sleep(0.1)


async def silent(server: HttpServer, writer: asyncio.StreamWriter) -> None:
    """Never answers: waits for the client to give up (or the test to end)."""
    await asyncio.sleep(3600)


class DictResolver:
    """DNS from a dict; `calls` counts the lookups of each name."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: dict[str, int] = {}

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls[host] = self.calls.get(host, 0) + 1
        if host not in self.answers:
            raise OSError(f"{host}: no such name in the test resolver")
        return list(self.answers[host])


class RebindingResolver:
    """A name that answers a public address once, then loopback: DNS rebinding."""

    def __init__(self, first: str, then: str) -> None:
        self.first, self.then, self.calls = first, then, 0

    async def resolve(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return [self.first if self.calls == 1 else self.then]


def _local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


class RecordingConnector(httpcore.AsyncNetworkBackend):
    """The network below the guard. Every connection asked for is recorded in `attempts`;
    loopback and 0.0.0.0 (where the listener is) are really connected, anything else fails at
    once, as with no route: no test reaches a real network. A name, which the guard must never
    pass down, is resolved again with `resolver`, as the OS would, and connected to: so a
    guard that checked one answer and let the OS pick another would reach the listener."""

    def __init__(self, resolver: Resolver | None = None) -> None:
        self.attempts: list[tuple[str, int]] = []
        self._resolver = resolver if resolver is not None else SystemResolver()
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.attempts.append((host, port))
        try:
            target = ipaddress.ip_address(host)
        except ValueError:
            target = ipaddress.ip_address((await self._resolver.resolve(host, port))[0])
        if not _local(target):
            raise httpcore.ConnectError(f"{target} is unreachable from the tests")
        return await self._real.connect_tcp(str(target), port, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


@dataclass(frozen=True)
class Certificates:
    """A test CA and a server certificate it signed for `name`."""

    name: str
    ca_pem: str
    chain: tuple[bytes, bytes]  # server certificate and key, PEM

    def server_context(self, directory: Path) -> ssl.SSLContext:
        (directory / "cert.pem").write_bytes(self.chain[0])
        (directory / "key.pem").write_bytes(self.chain[1])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem)


def make_certificates(name: str) -> Certificates:
    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(issuer or subject_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = build("taskapi test CA", ca_key, None, ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = build(name, key, ca.subject, ca_key, False)
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Certificates(name, ca.public_bytes(pem).decode(), (leaf.public_bytes(pem), key_pem))
