"""A small built-in origin server for the demo and the tests: streams bodies with flow control.

Endpoints (all ``GET`` unless said otherwise):

* ``/bytes?n=N[&seed=S][&chunk=K][&chunked=1]`` — N deterministic bytes (see :func:`payload`), with a
  Content-Length or, with ``chunked=1``, chunked; written in K-byte pieces as the client drains them.
* ``/tokens?n=N[&delay=SECONDS]`` — an SSE stream (``text/event-stream``, chunked) of N events, one chunk
  per event, ``delay`` apart: what a token-streaming model API sends.
* ``POST /echo`` — the request body streamed back, chunked, as it arrives (reading pauses while the
  client does not drain).
* ``/close?n=N`` — N bytes with neither Content-Length nor chunked: the body ends at the close.
* ``/status/CODE`` — an empty response with that status.
* ``/headers`` — the request head as the origin received it, as the body.
* ``/slow?delay=SECONDS`` — the response head only after ``delay``.
* ``/die?n=N`` — announces 2N bytes, sends N, then drops the connection.

Bodies are deterministic so a client can check them by sha256 without holding them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from ssl import SSLContext
from typing import Any, Callable
from urllib.parse import parse_qs

from httptools import HttpParserError, HttpRequestParser, parse_url

from .http.tls import forget_transport

__all__ = ("OriginProtocol", "payload", "payload_sha256", "start_origin", "token_event", "tokens_sha256")

_BLOCK = 64 * 1024


def _base_block(seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(_BLOCK)


_BASES: dict[int, bytes] = {}


def payload(size: int, seed: int = 0, piece: int = _BLOCK) -> Iterator[bytes]:
    """``size`` deterministic bytes in ``piece``-byte parts; every 64 KiB block differs (its index leads),
    so a lost, repeated or reordered block changes the digest."""
    base = _BASES.get(seed)
    if base is None:
        base = _BASES[seed] = _base_block(seed)
    buffer = bytearray()
    block = 0
    sent = 0
    while sent < size:
        while len(buffer) < piece and sent + len(buffer) < size:
            buffer += block.to_bytes(8, "big") + base[8:]
            block += 1
        take = min(piece, size - sent)
        part = bytes(buffer[:take])
        del buffer[:take]
        sent += take
        yield part


def payload_sha256(size: int, seed: int = 0) -> str:
    digest = hashlib.sha256()
    for part in payload(size, seed):
        digest.update(part)
    return digest.hexdigest()


def token_event(index: int) -> bytes:
    return b'data: {"index": %d, "token": "tok%d"}\n\n' % (index, index)


def tokens_sha256(count: int) -> str:
    digest = hashlib.sha256()
    for index in range(count):
        digest.update(token_event(index))
    return digest.hexdigest()


class OriginProtocol(asyncio.Protocol):
    """One connection to the origin; requests are answered one at a time, in order."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._parser = HttpRequestParser(self)
        self._transport: Any = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._paused = False
        self._resume: Callable[[], None] | None = None  # continues a paused response
        self._echoing = False
        self._keep_alive = True
        self._http10 = False
        self._busy = False
        self._queue: list[Callable[[], None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._resume = None
        self._queue.clear()
        forget_transport(self._transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except HttpParserError:
            self._transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self._transport.close()

    def pause_writing(self) -> None:
        self._paused = True
        if self._echoing:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._echoing:
            self._transport.resume_reading()
        resume = self._resume
        if resume is not None:
            self._resume = None
            resume()

    # -- parser callbacks --------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        # HTTP/1.0 requests never get chunked responses: streamed bodies end at the close instead.
        self._http10 = self._parser.get_http_version() != "1.1"
        method = self._parser.get_method()
        parsed = parse_url(self._url)
        path = parsed.path.decode("latin-1")
        query = {k: v[-1] for k, v in parse_qs((parsed.query or b"").decode("latin-1")).items()}
        if method == b"POST" and path == "/echo":
            self._echoing = True
            self._send_head(200, [(b"Content-Type", b"application/octet-stream"), (b"Transfer-Encoding", b"chunked")])
            return
        handler = self._route(method, path, query)
        if self._busy:
            self._queue.append(handler)
        else:
            self._busy = True
            handler()

    def on_body(self, body: bytes) -> None:
        if self._echoing and body:
            self._transport.write(b"%x\r\n" % len(body) + body + b"\r\n")

    def on_message_complete(self) -> None:
        if self._echoing:
            self._echoing = False
            self._transport.write(b"0\r\n\r\n")
            if self._paused:
                self._transport.resume_reading()
            self._done()

    # -- responses -----------------------------------------------------------------------------------

    def _route(self, method: bytes, path: str, query: dict[str, str]) -> Callable[[], None]:
        if path == "/bytes":
            size = int(query.get("n", "0"))
            seed = int(query.get("seed", "0"))
            piece = int(query.get("chunk", str(_BLOCK)))
            chunked = query.get("chunked") == "1" and not self._http10
            return lambda: self._send_payload(size, seed, piece, chunked, method == b"HEAD")
        if path == "/tokens":
            count = int(query.get("n", "10"))
            delay = float(query.get("delay", "0"))
            return lambda: self._send_tokens(count, delay)
        if path == "/close":
            size = int(query.get("n", "0"))
            return lambda: self._send_until_close(size)
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            return lambda: self._send_simple(code, b"")
        if path == "/headers":
            text = b"".join(name + b": " + value + b"\n" for name, value in self._headers)
            text = self._parser.get_method() + b" " + self._url + b"\n" + text
            return lambda: self._send_simple(200, text)
        if path == "/slow":
            delay = float(query.get("delay", "1"))

            def later() -> None:
                self._loop.call_later(delay, self._send_simple, 200, b"slow")

            return later
        if path == "/die":
            size = int(query.get("n", "1024"))
            return lambda: self._send_and_die(size)
        return lambda: self._send_simple(404, b"not found\n")

    def _send_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        lines = [b"HTTP/1.1 %d X\r\n" % status]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        if not self._keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        self._transport.write(b"".join(lines))

    def _send_simple(self, status: int, body: bytes) -> None:
        if self._transport.is_closing():
            return
        if status in (204, 304):
            self._send_head(status, [])
        else:
            self._send_head(status, [(b"Content-Length", b"%d" % len(body))])
            if body:
                self._transport.write(body)
        self._done()

    def _send_payload(self, size: int, seed: int, piece: int, chunked: bool, head_only: bool) -> None:
        framing = (b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", b"%d" % size)
        self._send_head(200, [(b"Content-Type", b"application/octet-stream"), framing])
        if head_only:
            self._done()
            return
        parts = payload(size, seed, piece)

        def pump() -> None:
            transport = self._transport
            for part in parts:
                if transport.is_closing():
                    return
                transport.write(b"%x\r\n" % len(part) + part + b"\r\n" if chunked else part)
                if self._paused:
                    self._resume = pump
                    return
            if chunked:
                transport.write(b"0\r\n\r\n")
            self._done()

        pump()

    def _send_tokens(self, count: int, delay: float) -> None:
        chunked = not self._http10
        if chunked:
            self._send_head(200, [(b"Content-Type", b"text/event-stream"), (b"Transfer-Encoding", b"chunked")])
        else:
            self._keep_alive = False
            self._send_head(200, [(b"Content-Type", b"text/event-stream")])
        index = 0

        def step() -> None:
            nonlocal index
            transport = self._transport
            if transport.is_closing():
                return
            if index < count:
                event = token_event(index)
                transport.write(b"%x\r\n" % len(event) + event + b"\r\n" if chunked else event)
                index += 1
                if delay:
                    self._loop.call_later(delay, step)
                else:
                    self._loop.call_soon(step)
                return
            if chunked:
                transport.write(b"0\r\n\r\n")
            self._done()

        step()

    def _send_until_close(self, size: int) -> None:
        self._keep_alive = False
        self._transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
        parts = payload(size)

        def pump() -> None:
            for part in parts:
                if self._transport.is_closing():
                    return
                self._transport.write(part)
                if self._paused:
                    self._resume = pump
                    return
            self._transport.close()

        pump()

    def _send_and_die(self, size: int) -> None:
        self._send_head(200, [(b"Content-Length", b"%d" % (2 * size))])
        self._transport.write(b"x" * size)
        self._loop.call_later(0.05, self._transport.abort)

    def _done(self) -> None:
        if not self._keep_alive:
            self._transport.close()
            return
        if self._queue:
            self._queue.pop(0)()
        else:
            self._busy = False


async def start_origin(host: str = "127.0.0.1", port: int = 0, *, ssl: SSLContext | None = None) -> asyncio.Server:
    """Serve the origin in the running loop; ``port=0`` picks a free port; ``ssl`` serves it over HTTPS."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(OriginProtocol, host, port, ssl=ssl)
