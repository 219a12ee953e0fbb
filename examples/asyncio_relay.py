"""A raw asyncio relay: each client gets the upstream's answer to its GET, byte for byte, via pump().

    python examples/asyncio_relay.py --upstream http://127.0.0.1:9000 --port 8080
    curl http://127.0.0.1:8080/some/path

No framework and no body parsing: the client's request line is read, the same GET goes to the upstream
(with ``Connection: close``), and whatever the upstream socket delivers — head and body, in its own
framing — is fed into a pushed Pipe and pumped to the client. The chunk objects the upstream transport
hands to ``data_received`` are the objects written to the client transport; no coroutine runs per chunk.
Flow control goes both ways through the pipe: a slow client pauses the upstream socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any
from urllib.parse import urlsplit

from fastpipe import Pipe
from fastpipe.pump import FlowProtocol, pump

MAX_HEAD = 16 * 1024


class Upstream(asyncio.Protocol):
    """Feeds the upstream's bytes into a pushed pipe; its transport is the producer the pipe pauses."""

    pipe: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pipe = Pipe.pushed(self, producer=transport, on_release=self._released)

    def _released(self, pipe: Any) -> None:
        self.transport.close()  # the body is over, failed or unwanted: the upstream connection goes

    def data_received(self, data: bytes) -> None:
        self.pipe.feed(data)

    def eof_received(self) -> None:
        if self.pipe.state in ("idle", "open"):
            self.pipe.feed_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pipe.state in ("idle", "open"):
            self.pipe.feed_error(exc or ConnectionResetError("the upstream closed early"))


class Relay(FlowProtocol):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.head = b""
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.task is not None:
            return  # one request per connection; anything after the head is ignored
        self.head += data
        if b"\r\n\r\n" not in self.head:
            if len(self.head) > MAX_HEAD:
                self.answer(b"431 Request Header Fields Too Large")
            return
        request_line = self.head.split(b"\r\n", 1)[0].split(b" ")
        if len(request_line) != 3 or request_line[0] != b"GET" or not request_line[1].startswith(b"/"):
            self.answer(b"400 Bad Request")
            return
        self.task = asyncio.ensure_future(self.relay(request_line[1]))

    def answer(self, status: bytes) -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.close()

    async def relay(self, target: bytes) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.upstream
        try:
            upstream_transport, upstream = await loop.create_connection(Upstream, host, port)
        except OSError:
            self.answer(b"502 Bad Gateway")
            return
        upstream_transport.write(
            b"GET " + target + b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\nConnection: close\r\n\r\n"
        )
        try:
            await pump(upstream.pipe, self.transport)
        except Exception:
            self.transport.abort()  # a broken upstream must look broken to the client
            return
        self.transport.close()


async def serve(upstream: str, host: str, port: int) -> None:
    parts = urlsplit(upstream)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit("--upstream must be an http:// URL")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Relay(parts.hostname or "", parts.port or 80), host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="http://host:port of the upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstream, args.host, args.port))


if __name__ == "__main__":
    main()
