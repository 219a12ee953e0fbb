"""Mixed client traffic on raw sockets, with an outcome per exchange that tells a clean end from a cut.

Every exchange is checked byte for byte against what the built-in origin sends. Its outcome is one of

* ``ok`` — the message ended by its own framing (Content-Length reached, or the chunked terminator) and the
  body is byte-identical to the expected one;
* ``truncated`` — the connection ended before the framing did, and what did arrive is an exact prefix of the
  expected body: the client *sees* that the message is incomplete;
* ``retried`` — a reused keep-alive connection was closed before any byte of the answer (the race every
  HTTP/1.1 client retries on a fresh connection, and does here);
* ``failed`` — anything else: no answer on a fresh connection, a status other than 200, wrong bytes, a body
  that ended cleanly but short, a timeout.

Each loop of requests is bounded in count, and every read in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache

from fastpipe._origin import payload, token_event

READ_TIMEOUT = 15.0  # seconds without progress before an exchange counts as failed


@dataclass
class Exchange:
    kind: str
    target: str
    port: int = 0  # the client's local port: what the balancer's log and the proxy's sockets show
    reused: bool = False  # sent on a keep-alive connection that had answered before
    started: float = 0.0  # wall clock (time.time()), comparable with the balancer's log
    ended: float = 0.0
    outcome: str = "failed"
    detail: str = ""
    received: int = 0
    expected: int = 0
    server: str = ""  # which instance answered, when the balancer's log says so

    def in_flight_at(self, moment: float) -> bool:
        return self.started < moment < self.ended


@cache
def download_body(size: int, seed: int) -> bytes:
    return b"".join(payload(size, seed))


@cache
def tokens_body(count: int) -> bytes:
    return b"".join(token_event(index) for index in range(count))


class _Cut(Exception):
    """The connection ended before the message's framing did."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    status_line, *lines = raw[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(b" ", 2)[1]), headers


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[bytes, bytes], body: bytearray, rate: float | None
) -> None:
    """Read the body into ``body`` by its framing; raise _Cut if the connection ends first. ``rate`` (bytes
    per second) reads slowly, as a slow client does, so the response stays in flight."""

    async def pace(size: int) -> None:
        if rate:
            await asyncio.sleep(size / rate)

    try:
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT)
                size = int(line.split(b";", 1)[0], 16)
                if size == 0:
                    await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_TIMEOUT)  # no trailers expected
                    return
                try:
                    data = await asyncio.wait_for(reader.readexactly(size + 2), READ_TIMEOUT)
                except asyncio.IncompleteReadError as exc:
                    body += exc.partial[:size]
                    raise
                body += data[:-2]
                await pace(size)
        elif b"content-length" in headers:
            length = int(headers[b"content-length"])
            while len(body) < length:
                data = await asyncio.wait_for(reader.read(min(65536, length - len(body))), READ_TIMEOUT)
                if not data:
                    raise _Cut
                body += data
                await pace(len(data))
        else:
            raise ValueError("a response without framing: the end of the body would not be visible")
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise _Cut from exc


def _judge(exchange: Exchange, body: bytes, expected: bytes, complete: bool) -> None:
    exchange.received = len(body)
    exchange.expected = len(expected)
    if complete:
        if body == expected:
            exchange.outcome = "ok"
        else:
            exchange.outcome = "failed"
            exchange.detail = f"ended cleanly with {len(body)} of {len(expected)} bytes or wrong bytes"
    elif expected.startswith(body):
        exchange.outcome = "truncated"
        exchange.detail = f"cut after {len(body)} of {len(expected)} bytes"
    else:
        exchange.outcome = "failed"
        exchange.detail = f"cut after {len(body)} bytes that are not a prefix of the expected body"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 5)
    except (ConnectionError, asyncio.TimeoutError):
        pass


async def get(
    host: str,
    port: int,
    kind: str,
    target: str,
    expected: bytes,
    *,
    rate: float | None = None,
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
    reused: bool = False,
) -> tuple[Exchange, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]:
    """One GET on a fresh connection, or on ``connection`` (keep-alive, ``reused`` if it answered before),
    which is returned when it may serve the next request."""
    exchange = Exchange(kind, target, started=time.time(), reused=reused)
    keep = connection is not None
    try:
        if connection is None:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), READ_TIMEOUT)
        else:
            reader, writer = connection
    except OSError as exc:
        exchange.ended = time.time()
        exchange.detail = f"connect: {exc!r}"
        return exchange, None
    exchange.port = writer.get_extra_info("sockname")[1]
    close = b"" if keep else b"Connection: close\r\n"
    body = bytearray()
    reusable = False
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: fleet\r\n%s\r\n" % (target.encode(), close))
        try:
            status, headers = await _read_head(reader)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            exchange.ended = time.time()
            if exchange.reused:
                exchange.outcome = "retried"
                exchange.detail = "a reused keep-alive connection closed before the answer"
            else:
                exchange.detail = f"no answer: {exc!r}"
            return exchange, None
        if status != 200:
            exchange.detail = f"status {status}"
            exchange.ended = time.time()
            return exchange, None
        try:
            await _read_body(reader, headers, body, rate)
            complete = True
        except _Cut:
            complete = False
        exchange.ended = time.time()
        _judge(exchange, bytes(body), expected, complete)
        reusable = keep and complete and headers.get(b"connection", b"").lower() != b"close"
    except (asyncio.TimeoutError, OSError, ValueError) as exc:
        exchange.ended = time.time()
        exchange.outcome = "failed"
        exchange.detail = f"{exc!r} after {len(body)} bytes"
    finally:
        if not reusable:
            await _close(writer)
    return exchange, ((reader, writer) if reusable else None)


async def upload(host: str, port: int, size: int, seed: int, *, rate: float) -> Exchange:
    """POST ``size`` bytes to /echo at ``rate`` bytes per second while reading the echo."""
    expected = download_body(size, seed)
    exchange = Exchange("upload", f"/echo ({size} bytes)", started=time.time())
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), READ_TIMEOUT)
    except OSError as exc:
        exchange.ended = time.time()
        exchange.detail = f"connect: {exc!r}"
        return exchange
    exchange.port = writer.get_extra_info("sockname")[1]

    async def send() -> None:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: fleet\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        piece = 32 * 1024
        for offset in range(0, size, piece):
            writer.write(expected[offset : offset + piece])
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
            await asyncio.sleep(piece / rate)

    sender = asyncio.create_task(send())
    body = bytearray()
    try:
        status, headers = await _read_head(reader)
        if status != 200:
            exchange.detail = f"status {status}"
        else:
            try:
                await _read_body(reader, headers, body, None)
                complete = True
            except _Cut:
                complete = False
            _judge(exchange, bytes(body), expected, complete)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        exchange.detail = f"no answer: {exc!r}"
    except (asyncio.TimeoutError, OSError, ValueError) as exc:
        exchange.outcome = "failed"
        exchange.detail = f"{exc!r} after {len(body)} bytes"
    finally:
        exchange.ended = time.time()
        sender.cancel()
        try:
            await sender
        except (asyncio.CancelledError, OSError, asyncio.TimeoutError):
            pass  # the sender only stops early when the response was cut, which the outcome says
        await _close(writer)
    return exchange


@dataclass
class Traffic:
    """Loops of each kind of exchange against one address until ``stop`` is set (each bounded in count)."""

    host: str
    port: int
    exchanges: list[Exchange] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(
        self,
        *,
        small: int = 3,
        keep_alive: int = 1,
        downloads: int = 2,
        uploads: int = 2,
        short_streams: int = 2,
        long_streams: int = 3,
        long_stream_seconds: float = 6.0,
    ) -> None:
        host, port = self.host, self.port

        def small_request(index: int) -> Awaitable[Exchange]:
            seed = index % 5
            return self._first(get(host, port, "small", f"/bytes?n=1024&seed={seed}", download_body(1024, seed)))

        def download(index: int) -> Awaitable[Exchange]:
            size, seed = 4 << 20, index % 3
            chunked = "&chunked=1" if index % 2 else ""
            return self._first(
                get(
                    host, port, "download", f"/bytes?n={size}&seed={seed}{chunked}", download_body(size, seed), rate=3e6
                )
            )

        def send_upload(index: int) -> Awaitable[Exchange]:
            return upload(host, port, 2 << 20, 10 + index % 3, rate=2e6)

        def short_stream(index: int) -> Awaitable[Exchange]:
            return self._first(get(host, port, "sse", "/tokens?n=40&delay=0.025", tokens_body(40)))

        events = int(long_stream_seconds / 0.02)

        def long_stream(index: int) -> Awaitable[Exchange]:
            return self._first(get(host, port, "sse-long", f"/tokens?n={events}&delay=0.02", tokens_body(events)))

        plan: list[tuple[int, Callable[[int], Awaitable[Exchange]], float, int]] = [
            (small, small_request, 0.02, 5000),
            (downloads, download, 0.05, 200),
            (uploads, send_upload, 0.05, 200),
            (short_streams, short_stream, 0.05, 400),
            (long_streams, long_stream, 0.05, 100),
        ]
        for copies, make, pause, limit in plan:
            for copy in range(copies):
                self.tasks.append(asyncio.create_task(self._loop(make, pause, limit, offset=copy)))
        for _ in range(keep_alive):
            self.tasks.append(asyncio.create_task(self._keep_alive_loop(limit=5000)))

    @staticmethod
    async def _first(pending: Awaitable[tuple[Exchange, object]]) -> Exchange:
        exchange, connection = await pending
        assert connection is None
        return exchange

    async def _loop(self, make: Callable[[int], Awaitable[Exchange]], pause: float, limit: int, offset: int) -> None:
        for index in range(offset, offset + limit):
            if self.stop.is_set():
                return
            self.exchanges.append(await make(index))
            await asyncio.sleep(pause)

    async def _keep_alive_loop(self, limit: int) -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        expected = download_body(512, 3)
        try:
            for _ in range(limit):
                if self.stop.is_set():
                    return
                reused = connection is not None
                if connection is None:
                    try:
                        connection = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), READ_TIMEOUT)
                    except OSError as exc:
                        failed = Exchange("keep-alive", "connect", started=time.time(), detail=f"connect: {exc!r}")
                        failed.ended = failed.started
                        self.exchanges.append(failed)
                        await asyncio.sleep(0.02)
                        continue
                exchange, connection = await get(
                    self.host,
                    self.port,
                    "keep-alive",
                    "/bytes?n=512&seed=3",
                    expected,
                    connection=connection,
                    reused=reused,
                )
                self.exchanges.append(exchange)
                await asyncio.sleep(0.01)
        finally:
            if connection is not None:
                await _close(connection[1])

    async def finish(self, timeout: float) -> None:
        """Stop starting exchanges and wait (bounded) for those in flight to end."""
        self.stop.set()
        done, pending = await asyncio.wait(self.tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            task.result()  # a bug in a client loop fails the test
        if pending:
            raise AssertionError(f"{len(pending)} client loops still ran {timeout} s after the traffic stopped")


def count(exchanges: list[Exchange], outcome: str, kinds: tuple[str, ...] | None = None) -> int:
    return sum(1 for e in exchanges if e.outcome == outcome and (kinds is None or e.kind in kinds))
