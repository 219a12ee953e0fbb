"""The benchmark origin in Python: fixed bodies, and paced SSE streams carrying their send time.

``GET /1k``, ``/16m`` (or any ``/<n>k``, ``/<n>m``): a body of that many bytes with Content-Length (the fallback
when nginx is absent; nginx serves the same paths from files otherwise).

``GET /sse?n=100&interval_ms=1&size=100``: a chunked ``text/event-stream`` of ``n`` events of ``size`` bytes,
one chunk per event, ``interval_ms`` apart. All open streams advance on one shared ticker, so each event leaves
in its own write (a proxy sees it as its own read) whatever the number of streams. ``hold=1`` sends the head and
one event and then holds the stream open until the client goes away (the idle-connections test).

The events are those of an OpenAI chat completion streamed with ``stream_options={"include_usage": true}``,
so that a gateway route with ``usage = "openai"`` has real work to do: content chunks
``data: {"id":"<stamp>","model":"bench","choices":[{"delta":{"content":"tok..."}}],"usage":null}``, then one
chunk with ``"choices":[]`` and the token ``usage``, then ``data: [DONE]`` (a stream of ``n`` events has
``n - 2`` content chunks; fewer than 3 events are content chunks only, as is a held stream). A content chunk's
content is padded with dots to make the event ``size`` bytes; the JSON needs about 100 (more on a machine
whose monotonic clock has more digits), so a smaller ``size`` gives that. Every chunk's ``id`` is
``time.monotonic_ns()`` taken just before its write: a client on this machine subtracts it from its arrival time
to get the per-event latency.

Keep-alive HTTP/1.1, parsed with httptools, on uvloop; over TLS with ``--certfile``/``--keyfile`` (the TLS
origin of the TLS cells when nginx is absent).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import time
from typing import cast
from urllib.parse import parse_qs

import httptools
import uvloop

SIZED_PATH = re.compile(rb"^/(\d+)([km])$")
BODY_CACHE: dict[int, bytes] = {}


def sized_body(path: bytes) -> bytes | None:
    match = SIZED_PATH.match(path)
    if match is None:
        return None
    size = int(match.group(1)) * (1024 if match.group(2) == b"k" else 1024 * 1024)
    if size > 64 * 1024 * 1024:
        return None
    body = BODY_CACHE.get(size)
    if body is None:
        body = BODY_CACHE[size] = b"x" * size
    return body


CONTENT_EVENT = b'data: {"id":"%d","model":"bench","choices":[{"delta":{"content":"tok%s"}}],"usage":null}\n\n'
USAGE_EVENT = (
    b'data: {"id":"%d","model":"bench","choices":[],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}}\n\n'
)
DONE_EVENT = b"data: [DONE]\n\n"
PROMPT_TOKENS = 12


class Stream:
    """One SSE response in progress."""

    __slots__ = ("events", "hold", "next_seq", "protocol", "remaining", "size")

    def __init__(self, protocol: OriginProtocol, events: int, size: int, hold: bool) -> None:
        self.protocol = protocol
        self.events = 0 if hold else events  # 0: content chunks only, no end
        self.remaining = events
        self.size = size
        self.hold = hold
        self.next_seq = 0

    def event(self) -> bytes:
        seq, total = self.next_seq, self.events
        self.next_seq += 1
        if total >= 2 and seq == total - 1:
            payload = DONE_EVENT
        elif total >= 3 and seq == total - 2:
            content = total - 2
            payload = USAGE_EVENT % (time.monotonic_ns(), content, PROMPT_TOKENS + content)
        else:
            stamp = time.monotonic_ns()
            padding = b"." * max(0, self.size - len(CONTENT_EVENT % (stamp, b"")))
            payload = CONTENT_EVENT % (stamp, padding)
        return b"%x\r\n%s\r\n" % (len(payload), payload)


class Ticker:
    """Advance every open stream by one event per tick; runs only while streams are open."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.streams: list[Stream] = []
        self.armed = False

    def add(self, stream: Stream) -> None:
        self.streams.append(stream)
        if not self.armed:
            self.armed = True
            self.loop.call_later(self.interval_s, self.tick)

    def tick(self) -> None:
        still_open: list[Stream] = []
        for stream in self.streams:
            protocol = stream.protocol
            if protocol.transport is None or protocol.stream is not stream:
                continue
            stream.remaining -= 1
            if stream.remaining > 0:
                protocol.transport.write(stream.event())
                still_open.append(stream)
            else:
                protocol.transport.write(stream.event() + b"0\r\n\r\n")
                protocol.stream_done()
        self.streams = still_open
        if self.streams:
            self.loop.call_later(self.interval_s, self.tick)
        else:
            self.armed = False


class OriginProtocol(asyncio.Protocol):
    def __init__(self, tickers: dict[float, Ticker]) -> None:
        self.tickers = tickers
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.stream: Stream | None = None
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.stream = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.respond(400, b"bad request\n", close=True)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        url, self.url = self.url, b""
        self.keep_alive = self.parser.should_keep_alive()
        if self.stream is not None:  # a pipelined request behind a stream: not supported by this origin
            self.respond(400, b"one stream at a time\n", close=True)
            return
        parsed = httptools.parse_url(url)
        body = sized_body(parsed.path)
        if body is not None:
            self.respond(200, body, close=not self.keep_alive)
        elif parsed.path == b"/sse":
            self.start_stream(parse_qs((parsed.query or b"").decode()))
        else:
            self.respond(404, b"not found\n", close=not self.keep_alive)

    def respond(self, status: int, body: bytes, *, close: bool) -> None:
        if self.transport is None:
            return
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}[status]
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            reason,
            len(body),
            b"Connection: close\r\n" if close else b"",
        )
        if len(body) > 65536:
            self.transport.write(head)
            self.transport.write(body)
        else:
            self.transport.write(head + body)
        if close:
            self.transport.close()

    def start_stream(self, query: dict[str, list[str]]) -> None:
        assert self.transport is not None
        try:
            events = int(query.get("n", ["100"])[0])
            interval_ms = float(query.get("interval_ms", ["1"])[0])
            size = int(query.get("size", ["100"])[0])
            hold = query.get("hold", ["0"])[0] == "1"
        except ValueError:
            self.respond(400, b"bad query\n", close=True)
            return
        if events < 1 or not 0 <= interval_ms <= 10_000 or not 32 <= size <= 65536:
            self.respond(400, b"n >= 1, 0 <= interval_ms <= 10000, 32 <= size <= 65536\n", close=True)
            return
        stream = Stream(self, events, size, hold)
        self.stream = stream
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n%s\r\n" % (b"" if self.keep_alive else b"Connection: close\r\n")
        )
        if hold:  # head and one event now, then nothing until the client leaves
            self.transport.write(head + stream.event())
            return
        self.transport.write(head)
        if interval_ms == 0:  # a burst: every event in its own write, no pacing
            for _ in range(events - 1):
                self.transport.write(stream.event())
            self.transport.write(stream.event() + b"0\r\n\r\n")
            self.stream_done()
            return
        interval_s = interval_ms / 1000
        ticker = self.tickers.get(interval_s)
        if ticker is None:
            ticker = self.tickers[interval_s] = Ticker(asyncio.get_running_loop(), interval_s)
        ticker.add(stream)

    def stream_done(self) -> None:
        self.stream = None
        if not self.keep_alive and self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, context: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    tickers: dict[float, Ticker] = {}
    server = await loop.create_server(lambda: OriginProtocol(tickers), host, port, backlog=4096, ssl=context)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT")
    parser.add_argument("--certfile", help="serve over TLS with this certificate chain (PEM)")
    parser.add_argument("--keyfile", help="the private key of --certfile")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    context = None
    if args.certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.certfile, args.keyfile)
    uvloop.run(serve(host, int(port), context))


if __name__ == "__main__":
    main()
