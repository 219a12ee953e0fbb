"""Load clients in Python (uvloop + httptools), run as their own processes by the harness.

``http``  keep-alive GETs on N connections for a duration: requests, bytes, latency percentiles (the fallback
          when wrk is absent; wrk is several times cheaper per request).
``sse``   repeated SSE streams on N connections: streams, events and per-event delay, the arrival time minus
          the send time the origin wrote into the event as its ``id`` (both CLOCK_MONOTONIC on this machine;
          the closing ``data: [DONE]`` has none and is not counted).
``ws``    WebSocket echo on N connections for a duration, closed loop: each connection sends one message of
          ``--message-size`` bytes (text up to 64 KiB, else binary), waits for its echo, sends the next. Raw frames
          on uvloop, written for speed: the client masks with a zero key (allowed by RFC 6455), so the frame it
          sends is the same bytes every time and neither side does per-byte work; echoes up to 64 KiB are
          compared byte for byte, larger ones are counted. ``requests`` counts echoed messages, ``bytes`` the
          payload bytes carried both ways (2 x size per message), ``latency_us`` the round trips.
``idle``  opens N streams that the origin holds open after one event, in batches; prints ``READY <ok> <failed>``
          once all are established (or failed), holds them until a line (or EOF) arrives on stdin, then closes.

Each prints one JSON object on its last line of stdout. Every loop is bounded by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import ssl
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop

STAMPED = b'data: {"id":"'  # an SSE event of the benchmark origin, its send time next


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1
    picks = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p999": 0.999}
    result = {name: float(ordered[min(last, round(share * last))]) for name, share in picks.items()}
    result["max"] = float(ordered[-1])
    result["mean"] = sum(ordered) / len(ordered)
    return result


@dataclass
class Tally:
    requests: int = 0
    events: int = 0
    bytes: int = 0
    errors: int = 0
    latency_us: array[float] = field(default_factory=lambda: array("d"))
    event_delay_us: array[float] = field(default_factory=lambda: array("d"))


class Exchange(asyncio.Protocol):
    """Keep-alive GETs of one path on one connection until the deadline; optionally reads SSE events."""

    def __init__(self, request: bytes, tally: Tally, deadline: float, sse: bool) -> None:
        self.request = request
        self.tally = tally
        self.deadline = deadline
        self.sse = sse
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0
        self.arrival_ns = 0
        self.pending = b""
        self.status_ok = True
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.monotonic()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.arrival_ns = time.monotonic_ns()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.tally.errors += 1
            self.close()

    def on_headers_complete(self) -> None:
        self.status_ok = self.parser.get_status_code() == 200

    def on_body(self, body: bytes) -> None:
        self.tally.bytes += len(body)
        if self.sse:
            self.read_events(body)

    def read_events(self, body: bytes) -> None:
        data = self.pending + body
        *events, self.pending = data.split(b"\n\n")
        for event in events:
            # the origin's chunks begin 'data: {"id":"<monotonic ns>"'; data: [DONE] carries no time
            if event.startswith(STAMPED):
                end = event.find(b'"', len(STAMPED))
                self.tally.events += 1
                self.tally.event_delay_us.append((self.arrival_ns - int(event[len(STAMPED) : end])) / 1000)

    def on_message_complete(self) -> None:
        now = time.monotonic()
        if self.status_ok:
            self.tally.requests += 1
            self.tally.latency_us.append((now - self.sent_at) * 1e6)
        else:
            self.tally.errors += 1
        self.pending = b""
        if now < self.deadline and self.parser.should_keep_alive():
            self.send()
        else:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.monotonic() < self.deadline:
            self.tally.errors += 1  # the server hung up early
        if not self.finished.done():
            self.finished.set_result(None)


def request_bytes(url: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return host, port, f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


async def run_exchanges(url: str, connections: int, duration: float, sse: bool) -> dict[str, object]:
    host, port, request = request_bytes(url)
    loop = asyncio.get_running_loop()
    context: ssl.SSLContext | None = None
    if url.startswith("https:"):  # straight to the TLS origin: like wrk, the client does not verify it
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    tally = Tally()
    started = time.monotonic()
    deadline = started + duration
    protocols: list[Exchange] = []
    for _ in range(connections):
        try:
            _, protocol = await loop.create_connection(
                lambda: Exchange(request, tally, deadline, sse), host, port, ssl=context
            )
        except OSError:
            tally.errors += 1
            continue
        protocols.append(protocol)
    # In-flight responses may end a little after the deadline; a hung one is cut off.
    waiting = [protocol.finished for protocol in protocols]
    if waiting:
        await asyncio.wait(waiting, timeout=duration + 30)
    for protocol in protocols:
        protocol.close()
    elapsed = time.monotonic() - started
    result: dict[str, object] = {
        "requests": tally.requests,
        "bytes": tally.bytes,
        "errors": tally.errors,
        "duration_s": elapsed,
        "latency_us": percentiles(tally.latency_us),
    }
    if sse:
        result["events"] = tally.events
        result["event_delay_us"] = percentiles(tally.event_delay_us)
    return result


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WS_CHECKED_MAX = 64 * 1024  # echoes up to this size are compared byte for byte


def ws_frame_head(first: int, length: int, *, masked: bool) -> bytes:
    """A frame head; a masked one carries the zero key."""
    bit = 0x80 if masked else 0
    if length < 126:
        head = bytes((first, bit | length))
    elif length < 65536:
        head = bytes((first, bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + length.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" if masked else head


class WsEcho(asyncio.Protocol):
    """One WebSocket connection in a closed loop of echoed messages until the deadline."""

    def __init__(self, handshake: bytes, accept: bytes, size: int, tally: Tally, deadline: float) -> None:
        self.handshake = handshake
        self.accept = accept
        opcode = 0x1 if size <= WS_CHECKED_MAX else 0x2  # text for small messages, binary for bulk
        payload = (b"m" * size) if opcode == 0x1 else os.urandom(1) * size
        self.message = ws_frame_head(0x80 | opcode, size, masked=True) + payload
        self.echo = ws_frame_head(0x80 | opcode, size, masked=False) + payload
        self.checked = size <= WS_CHECKED_MAX
        self.size = size
        self.tally = tally
        self.deadline = deadline
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.open = False
        self.closing = False
        self.got = 0
        self.seen = bytearray()
        self.sent_at = 0.0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport.write(self.handshake)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # the server's close frame and whatever preceded it
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 16384:
                    self.fail()
                return
            head, rest = self.head[:end], self.head[end + 4 :]
            if not head.startswith(b"HTTP/1.1 101 ") or b"\r\nsec-websocket-accept: " + self.accept not in head.lower():
                self.fail()
                return
            self.open, self.head = True, b""
            self.send()
            if not rest:
                return
            data = rest
        self.got += len(data)
        if self.checked:
            self.seen += data
        if self.got < len(self.echo):
            return
        if self.got > len(self.echo) or (self.checked and self.seen != self.echo):
            self.fail()  # more than one echo, or different bytes
            return
        self.got = 0
        self.seen.clear()
        now = time.monotonic()
        self.tally.requests += 1
        self.tally.bytes += 2 * self.size
        self.tally.latency_us.append((now - self.sent_at) * 1e6)
        if now < self.deadline:
            self.send()
        else:
            self.close()

    def send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.monotonic()
        self.transport.write(self.message)

    def fail(self) -> None:
        self.tally.errors += 1
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        """A close frame (status 1000); the server answers with its own and hangs up."""
        if self.transport is None or self.closing:
            return
        self.closing = True
        if self.open:
            self.transport.write(ws_frame_head(0x88, 2, masked=True) + (1000).to_bytes(2, "big"))
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.tally.errors += 1  # the server or the proxy hung up early
        self.transport = None
        if not self.finished.done():
            self.finished.set_result(None)


async def run_websockets(url: str, connections: int, duration: float, size: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    tally = Tally()
    started = time.monotonic()
    deadline = started + duration
    protocols: list[WsEcho] = []
    for _ in range(connections):
        key = base64.b64encode(os.urandom(16))
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).lower()
        handshake = (
            (
                f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            ).encode()
            + key
            + b"\r\n\r\n"
        )
        try:
            protocol = WsEcho(handshake, accept, size, tally, deadline)
            await loop.create_connection(lambda: protocol, host, port)  # noqa: B023 (awaited at once)
        except OSError:
            tally.errors += 1
            continue
        protocols.append(protocol)
    waiting = [protocol.finished for protocol in protocols]
    if waiting:
        await asyncio.wait(waiting, timeout=duration + 30)
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    elapsed = time.monotonic() - started
    return {
        "requests": tally.requests,
        "bytes": tally.bytes,
        "errors": tally.errors,
        "duration_s": elapsed,
        "latency_us": percentiles(tally.latency_us),
    }


class Holder(asyncio.Protocol):
    """One idle stream: established once the head and the first event came through."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.established: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.seen = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.established.done():
            return
        self.seen += data
        if b"data: " in self.seen:
            self.established.set_result(self.seen.startswith(b"HTTP/1.1 200"))
            self.seen = b""

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.established.done():
            self.established.set_result(False)


async def hold_streams(url: str, connections: int, batch: int, timeout: float) -> dict[str, object]:
    host, port, request = request_bytes(url)
    loop = asyncio.get_running_loop()
    holders: list[Holder] = []
    failed = 0
    started = time.monotonic()
    deadline = started + timeout

    async def open_one() -> bool:
        try:
            _, holder = await loop.create_connection(lambda: Holder(request), host, port)
        except OSError:
            return False
        holders.append(holder)
        try:
            return await asyncio.wait_for(holder.established, max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return False

    for first in range(0, connections, batch):
        if time.monotonic() >= deadline:
            failed += connections - first
            break
        size = min(batch, connections - first)
        results = await asyncio.gather(*(open_one() for _ in range(size)))
        failed += results.count(False)
    ok = connections - failed
    opened_s = time.monotonic() - started
    print(f"READY {ok} {failed}", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for holder in holders:
        if holder.transport is not None:
            holder.transport.close()
    await asyncio.sleep(0.1)
    return {"established": ok, "failed": failed, "open_s": opened_s}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("http", "sse", "ws", "idle"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (http, sse)")
    parser.add_argument("--message-size", type=int, default=1024, help="bytes per message (ws)")
    parser.add_argument("--batch", type=int, default=64, help="streams opened at once (idle)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to open every stream (idle)")
    args = parser.parse_args(argv)
    if args.mode == "idle":
        result = uvloop.run(hold_streams(args.url, args.connections, args.batch, args.timeout))
    elif args.mode == "ws":
        result = uvloop.run(run_websockets(args.url, args.connections, args.duration, args.message_size))
    else:
        result = uvloop.run(run_exchanges(args.url, args.connections, args.duration, args.mode == "sse"))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
