"""A proxy in front of the recording chaos origin, and a raw exchange that reads until the proxy closes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastpipe.http import ExchangeRecord, Proxy, proxy_of, shutdown_proxy, start_proxy

from .._origin import ChaosOrigin
from .._wire import Response, StrictError, parse_response

__all__ = ("ProxiedOrigin", "RawResult", "proxied_origin", "raw_exchange")


@dataclass
class ProxiedOrigin:
    origin: ChaosOrigin
    server: asyncio.Server
    records: list[ExchangeRecord]
    handler_calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def proxy(self) -> Proxy:
        return proxy_of(self.server)


@contextlib.asynccontextmanager
async def proxied_origin(**limits: Any) -> AsyncIterator[ProxiedOrigin]:
    """A chaos origin (default plans: a small 200) behind a fresh proxy; the loop's exception handler
    calls are recorded instead of logged."""
    loop = asyncio.get_running_loop()
    origin = await ChaosOrigin().start()
    records: list[ExchangeRecord] = []
    server = await start_proxy(f"http://127.0.0.1:{origin.port}", port=0, on_exchange=records.append, **limits)
    peers = ProxiedOrigin(origin, server, records)
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: peers.handler_calls.append(context))
    try:
        yield peers
    finally:
        loop.set_exception_handler(previous)
        await shutdown_proxy(server, grace=0.2)
        await origin.close()


@dataclass
class RawResult:
    received: bytes
    closed: bool  # the proxy closed the connection (FIN or RST) within the time allowed
    responses: list[Response]
    malformed: str | None


async def raw_exchange(
    port: int, data: bytes | list[bytes], *, timeout: float = 3.0, pieces: int = 1, pause: float = 0.0
) -> RawResult:
    """Send ``data`` (in ``pieces`` writes, or the writes a list gives, ``pause`` seconds apart: with a
    pause, each its own segment) on a fresh connection; read until the proxy closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if pause:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if isinstance(data, bytes):
        step = max(1, len(data) // pieces)
        data = [data[start : start + step] for start in range(0, len(data), step)]
    received = b""
    closed = False
    try:
        with contextlib.suppress(ConnectionError):
            for index, piece in enumerate(data):
                if index and pause:
                    await asyncio.sleep(pause)
                writer.write(piece)
                await writer.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), remaining)
            except (asyncio.TimeoutError, TimeoutError):
                break
            except ConnectionError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        writer.transport.abort()
    responses: list[Response] = []
    malformed = None
    position = 0
    try:
        while position < len(received):
            found = parse_response(received[position:], eof=closed)
            if found is None:
                break
            responses.append(found[0])
            position += found[1]
    except StrictError as exc:
        malformed = str(exc)
    return RawResult(received, closed, responses, malformed)
