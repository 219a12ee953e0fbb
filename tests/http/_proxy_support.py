"""Helpers for the proxy tests: raw sockets, recording origins, bounded waits."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from ssl import SSLContext
from typing import Any

from httptools import HttpResponseParser

from fastpipe.http import ExchangeRecord, Proxy, proxy_of


async def raw_exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the proxy closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
        await writer.wait_closed()


class ParsedResponse:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


def parse_responses(data: bytes) -> list[ParsedResponse]:
    """Every response in ``data``, in order; the last one may be incomplete (``complete`` False)."""
    responses: list[ParsedResponse] = []

    class Callbacks:
        def on_message_begin(self) -> None:
            responses.append(ParsedResponse())

        def on_header(self, name: bytes, value: bytes) -> None:
            responses[-1].headers.append((name, value))

        def on_headers_complete(self) -> None:
            responses[-1].status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            responses[-1].body += body

        def on_message_complete(self) -> None:
            responses[-1].complete = True

    parser = HttpResponseParser(Callbacks())
    parser.feed_data(data)
    return responses


async def sha256_of_stream(chunks: AsyncIterator[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class RecordingOrigin(asyncio.Protocol):
    """An origin that records every byte it receives and answers with a scripted reply per read.

    ``reply(origin, data)`` is called for each read; by default each complete request head gets a small
    200 response. Used where the test must see exactly what the proxy sent upstream.
    """

    received: list[bytes]
    connections: list[RecordingOrigin]

    def __init__(self, registry: list[RecordingOrigin], reply: Callable[[RecordingOrigin, bytes], Any] | None) -> None:
        self.registry = registry
        self.reply = reply
        self.received = []
        self.transport: Any = None
        self.closed = asyncio.get_running_loop().create_future()
        registry.append(self)

    @property
    def data(self) -> bytes:
        return b"".join(self.received)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.append(data)
        if self.reply is not None:
            self.reply(self, data)
        else:
            for _ in range(self.data.count(b"\r\n\r\n") - getattr(self, "_answered", 0)):
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            self._answered = self.data.count(b"\r\n\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # Python 3.10's TLS transports warn when collected unclosed
        if not self.closed.done():
            self.closed.set_result(None)


async def start_recording_origin(
    reply: Callable[[RecordingOrigin, bytes], Any] | None = None, *, ssl: SSLContext | None = None
) -> tuple[asyncio.Server, list[RecordingOrigin]]:
    registry: list[RecordingOrigin] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RecordingOrigin(registry, reply), "127.0.0.1", 0, ssl=ssl)
    return server, registry


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``condition`` every 10 ms, for at most ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class ProxyUnderTest:
    """A started proxy: its port, the records of ended exchanges, and its shared state."""

    def __init__(self, server: asyncio.Server, records: list[ExchangeRecord]) -> None:
        self.server = server
        self.records = records
        self.port: int = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proxy: Proxy = proxy_of(server)

    async def wait_records(self, count: int, timeout: float = 5.0) -> list[ExchangeRecord]:
        """Wait (bounded) until ``count`` exchanges have ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.records) < count:
            if loop.time() > deadline:
                raise AssertionError(f"only {len(self.records)} of {count} exchanges ended: {self.records}")
            await asyncio.sleep(0.01)
        return self.records

    async def only_connection(self) -> Any:
        """The proxy's one client connection (its ProxyProtocol), once it is there (bounded wait)."""
        await wait_for(lambda: len(self.proxy.connections) == 1, what="one client connection")
        [connection] = self.proxy.connections
        return connection


async def small_window_client(port: int, receive_buffer: int) -> socket.socket:
    """A non-blocking socket connected to ``port`` whose receive buffer is ``receive_buffer`` bytes, so
    that a client that reads slowly (or not at all) fills quickly and the proxy meets backpressure."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    client.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", port))
    except BaseException:
        client.close()
        raise
    return client


StartProxy = Callable[..., Awaitable[ProxyUnderTest]]
MakeRecordingOrigin = Callable[..., Awaitable[tuple[int, list[RecordingOrigin]]]]


class TlsFiles:
    """PEM files of a throwaway CA and of a server certificate it issued (for 127.0.0.1, localhost, ::1)."""

    def __init__(self, directory: Path) -> None:
        import trustme

        authority = trustme.CA()
        issued = authority.issue_cert("127.0.0.1", "localhost", "::1")
        self.ca = directory / "ca.pem"
        self.cert = directory / "server.pem"
        self.key = directory / "server.key"
        authority.cert_pem.write_to_path(str(self.ca))
        issued.private_key_pem.write_to_path(str(self.key))
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        for intermediate in issued.cert_chain_pems[1:]:
            intermediate.write_to_path(str(self.cert), append=True)
        self.authority = authority

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def make_tls_files(directory: Path) -> TlsFiles:
    return TlsFiles(directory)
