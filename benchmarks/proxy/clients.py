"""Load clients in Python (uvloop + httptools), run as their own processes by the harness.

``http``  keep-alive GETs on N connections for a duration: requests, bytes, latency percentiles (the fallback
          when wrk is absent; wrk is several times cheaper per request).
``sse``   repeated SSE streams on N connections: streams, events and per-event delay, the arrival time minus
          the send time the origin wrote into the event (both CLOCK_MONOTONIC on this machine).
``idle``  opens N streams that the origin holds open after one event, in batches; prints ``READY <ok> <failed>``
          once all are established (or failed), holds them until a line (or EOF) arrives on stdin, then closes.

Each prints one JSON object on its last line of stdout. Every loop is bounded by a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools
import uvloop


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
            fields = event.split(b" ", 3)
            if len(fields) >= 3 and fields[0] == b"data:":
                self.tally.events += 1
                self.tally.event_delay_us.append((self.arrival_ns - int(fields[2])) / 1000)

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
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return host, port, f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()


async def run_exchanges(url: str, connections: int, duration: float, sse: bool) -> dict[str, object]:
    host, port, request = request_bytes(url)
    loop = asyncio.get_running_loop()
    tally = Tally()
    started = time.monotonic()
    deadline = started + duration
    protocols: list[Exchange] = []
    for _ in range(connections):
        try:
            _, protocol = await loop.create_connection(lambda: Exchange(request, tally, deadline, sse), host, port)
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
    parser.add_argument("mode", choices=("http", "sse", "idle"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load (http, sse)")
    parser.add_argument("--batch", type=int, default=64, help="streams opened at once (idle)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to open every stream (idle)")
    args = parser.parse_args(argv)
    if args.mode == "idle":
        result = uvloop.run(hold_streams(args.url, args.connections, args.batch, args.timeout))
    else:
        result = uvloop.run(run_exchanges(args.url, args.connections, args.duration, args.mode == "sse"))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
