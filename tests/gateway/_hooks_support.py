"""What the hook tests share: an origin that records the request heads exactly as they arrived and streams
bodies chunk by chunk, a raw HTTP/1.1 client on a plain socket, and small waits that always end."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._gateway_support import AppOrigin, Gateway, gateway, running

__all__ = (
    "HookGateway",
    "RawClient",
    "RawResponse",
    "Seen",
    "StreamOrigin",
    "chunk_of",
    "eventually",
    "hooked",
    "loop_errors",
    "raw_client",
    "raw_request",
    "stream_origins",
    "streamed_body",
)

WAIT = 5.0  # seconds any single wait in these tests may take


HookGateway = Gateway  # the gateway helpers' own, under the name these tests use
hooked = gateway


@dataclass
class Seen:
    """One request as the origin got it: the header fields in order, as sent (duplicates kept)."""

    server: str
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        key = name.lower()
        return [value for item, value in self.headers if item.lower() == key]


@dataclass
class Streamed:
    """What happened to one ``/stream`` response on the origin's side."""

    chunks: int
    written: int = 0
    finished: bool = False
    broken: bool = False


def chunk_of(index: int, size: int) -> bytes:
    """Chunk ``index`` of a stream: ``<index>`` then filler, ``size`` bytes, each one different."""
    label = b"<%05d>" % index
    return label + b"." * max(0, size - len(label))


def streamed_body(chunks: int, size: int) -> bytes:
    return b"".join(chunk_of(index, size) for index in range(chunks))


class StreamOrigin(AppOrigin):
    """An aiohttp origin. Every path answers JSON saying what it got (``X-Origin: NAME``), except:

    * ``/status/N`` answers status N (same JSON);
    * ``/stream?chunks=N&size=S&delay=D&length=1`` writes N chunks of S bytes, D seconds apart, with a
      Content-Length (``length=1``) or chunked; ``streams`` tells how far each got.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[Seen] = []
        self.streams: list[Streamed] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers]
        seen = Seen(self.name, request.method, request.raw_path, headers, body)
        self.requests.append(seen)
        if request.path == "/stream":
            return await self.stream(request)
        status = int(request.path.rsplit("/", 1)[1]) if "/status/" in request.path else 200
        answer = {"server": self.name, "method": request.method, "target": request.raw_path, "body": len(body)}
        return web.json_response(answer, status=status, headers={"X-Origin": self.name})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        chunks = int(request.query.get("chunks", "10"))
        size = int(request.query.get("size", "100"))
        delay = float(request.query.get("delay", "0"))
        state = Streamed(chunks)
        self.streams.append(state)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "X-Origin": self.name})
        if request.query.get("length") == "1":
            response.content_length = chunks * size
        try:
            await response.prepare(request)
            for index in range(chunks):
                if index and delay:
                    await asyncio.sleep(delay)
                await response.write(chunk_of(index, size))
                state.written += 1
            await response.write_eof()
        except BaseException:
            state.broken = True
            raise
        state.finished = True
        return response


@asynccontextmanager
async def stream_origins(*names: str) -> AsyncIterator[list[StreamOrigin]]:
    async with running(*(StreamOrigin(name) for name in names)) as started:
        yield started


def raw_request(
    method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"", chunked: bool = False
) -> bytes:
    """The bytes of one HTTP/1.1 request (Host: test unless given); a body gets its Content-Length or is
    sent in two chunks."""
    fields = list(headers or [])
    if not any(name.lower() == "host" for name, _ in fields):
        fields.insert(0, ("Host", "test"))
    if chunked:
        fields.append(("Transfer-Encoding", "chunked"))
        half = len(body) // 2
        pieces = [piece for piece in (body[:half], body[half:]) if piece]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    else:
        if body or method in ("POST", "PUT", "PATCH"):
            fields.append(("Content-Length", str(len(body))))
        payload = body
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in fields) + "\r\n"
    return head.encode("latin-1") + payload


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_body: bytes = b""  # the body as it came on the wire (with any chunk framing)
    chunks: list[bytes] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        key = name.lower()
        for item, value in self.headers:
            if item.lower() == key:
                return value
        return None


class RawClient:
    """One client connection on a plain socket: what it sends and reads is exactly what it says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WAIT)

    async def head(self) -> RawResponse:
        """Read one response head."""
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name, value.strip()))
        return RawResponse(status, headers)

    async def body_of(self, response: RawResponse, head_only: bool = False) -> RawResponse:
        """Read the body of ``response`` (whose head was read) by its framing."""
        if head_only or response.status in (204, 304):
            return response
        length = response.header("content-length")
        if length is not None:
            response.body = response.raw_body = await asyncio.wait_for(self.reader.readexactly(int(length)), WAIT)
            return response
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            raw = bytearray()
            while True:
                line = await asyncio.wait_for(self.reader.readuntil(b"\r\n"), WAIT)
                raw += line
                size = int(line.split(b";")[0], 16)
                data = await asyncio.wait_for(self.reader.readexactly(size + 2), WAIT)
                raw += data
                if size == 0:
                    break
                response.chunks.append(data[:-2])
            response.body = b"".join(response.chunks)
            response.raw_body = bytes(raw)
            return response
        response.body = response.raw_body = await asyncio.wait_for(self.reader.read(), WAIT)
        return response

    async def response(self, head_only: bool = False) -> RawResponse:
        return await self.body_of(await self.head(), head_only)

    async def read_exactly(self, size: int) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(size), WAIT)

    async def at_eof(self) -> bool:
        """Whether the proxy closed the connection (nothing more comes)."""
        try:
            rest = await asyncio.wait_for(self.reader.read(1), WAIT)
        except ConnectionError:
            return True
        return rest == b""

    def reset(self) -> None:
        """Leave at once with a reset (SO_LINGER 0): the proxy learns it at its next read."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)
        except (ConnectionError, asyncio.TimeoutError):
            pass


@asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[RawClient]:
    client = await RawClient.open(port)
    try:
        yield client
    finally:
        client.reset()


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


@contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """The contexts handed to the running loop's exception handler meanwhile (instead of logging them)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    try:
        yield seen
    finally:
        loop.set_exception_handler(previous)
