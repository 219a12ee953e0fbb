"""Real parts the adapter tests share: a local origin server, owners that remember their release, servers.

The origin is a real aiohttp server on 127.0.0.1 (port 0). Every body it sends is a known pattern, so a
test can compare the bytes that arrived with the bytes that left, and it records what its handlers saw
(the client's port, whether the body was sent to the end or the client went away).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from aiohttp import web

# -- bodies ---------------------------------------------------------------------------------------------------


def piece(index: int, size: int) -> bytes:
    """Chunk ``index`` of a patterned body: easy to check, different from its neighbours."""
    return bytes([index % 251]) * size


def pattern(n: int, size: int) -> bytes:
    return b"".join(piece(i, size) for i in range(n))


def sse_body(n: int, usage: dict[str, int]) -> bytes:
    """An OpenAI-style chat completion stream: n delta events, a final usage event, then [DONE]."""
    events = []
    for i in range(n):
        chunk = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]}
        events.append(f"data: {json.dumps(chunk)}\n\n")
    events.append(f"data: {json.dumps({'id': 'chatcmpl-1', 'choices': [], 'usage': usage})}\n\n")
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


# -- owners and sources ---------------------------------------------------------------------------------------


class Owner:
    """Weak-referenceable stand-in for an upstream response."""

    def __init__(self, name: str = "owner") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Owner {self.name}>"


@dataclass
class Releases:
    """An ``on_release`` that records when and in which state each pipe was released."""

    calls: list[tuple[str, float]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, pipe: Any) -> None:
        self.calls.append((pipe.state, time.monotonic()))
        self.event.set()

    async def wait(self, timeout: float) -> tuple[str, float]:
        await asyncio.wait_for(self.event.wait(), timeout)
        return self.calls[0]


async def chunks(n: int, size: int, *, delay: float = 0.0, then: str = "end") -> AsyncIterator[bytes]:
    """n patterned chunks; ``then`` is "end", "hang" (an idle upstream: wait until cancelled) or "fail"."""
    for index in range(n):
        if delay:
            await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)
        yield piece(index, size)
    if then == "hang":
        await asyncio.Event().wait()
    elif then == "fail":
        raise UpstreamBroke("the upstream broke mid-body")


class UpstreamBroke(Exception):
    """What a scripted upstream raises when asked to fail."""


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms; fail after ``timeout`` seconds (a bounded loop)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


# -- the origin -----------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    """What the origin saw of one request."""

    path: str
    peer_port: int
    outcome: str = "streaming"  # then "complete" or "client-gone"


def openai_chunks(model: str, n: int, include_usage: bool) -> list[bytes]:
    """The events of an OpenAI chat completion stream, as the real API frames them."""
    events = []
    for i in range(n):
        chunk: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}],
        }
        if include_usage:
            chunk["usage"] = None
        events.append(f"data: {json.dumps(chunk)}\n\n".encode())
    if include_usage:
        usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
        last = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
        events.append(f"data: {json.dumps({**last, 'choices': [], 'usage': usage})}\n\n".encode())
    events.append(b"data: [DONE]\n\n")
    return events


def anthropic_events(model: str, n: int) -> list[bytes]:
    """The events of an Anthropic messages stream: message_start, deltas, message_delta, message_stop."""

    def event(kind: str, data: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()

    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": []}
    events = [event("message_start", {"message": {**start, "usage": {"input_tokens": 9, "output_tokens": 1}}})]
    events.append(event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}))
    events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
    for i in range(n):
        events.append(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f"t{i} "}}))
    events.append(event("content_block_stop", {"index": 0}))
    events.append(event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": n}}))
    events.append(event("message_stop", {}))
    return events


class Origin:
    """A real aiohttp server with a few upstream behaviours, on an ephemeral port of 127.0.0.1.

    ``/chunks?n=&size=&delay=&framing=chunked|length&then=end|hang|abort``: n patterned chunks.
    ``/sse?n=&delay=&then=end|hang``: an OpenAI-style event stream with a final usage event.
    ``POST /v1/chat/completions`` and ``POST /v1/messages``: an OpenAI- and an Anthropic-compatible
    provider. ``max_tokens`` is the number of content events; a model name ending in ``-slow`` sends
    one event every 30 ms, one ending in ``-dies`` breaks the connection after half of them.
    """

    USAGE = {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}

    def __init__(self) -> None:
        self.exchanges: list[Exchange] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/chunks", self._chunks)
        app.router.add_get("/sse", self._sse)
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        # Handler cancellation: the origin learns at once that its client (the gateway) went away.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _begin(self, request: web.Request) -> Exchange:
        peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
        exchange = Exchange(request.path_qs, peer[1])
        self.exchanges.append(exchange)
        return exchange

    async def _chunks(self, request: web.Request) -> web.StreamResponse:
        exchange = self._begin(request)
        query = request.query
        n, size = int(query.get("n", "10")), int(query.get("size", "1000"))
        delay, then = float(query.get("delay", "0")), query.get("then", "end")
        response = web.StreamResponse()
        if query.get("framing", "chunked") == "length":
            response.content_length = n * size
        else:
            response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for index in range(n):
                await response.write(piece(index, size))
                if delay:
                    await asyncio.sleep(delay)
            if then == "hang":
                await asyncio.Event().wait()
            if then == "abort":
                assert request.transport is not None
                request.transport.abort()
                exchange.outcome = "aborted"
                return response
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            exchange.outcome = "client-gone"
            raise
        exchange.outcome = "complete"
        return response

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        exchange = self._begin(request)
        n, delay = int(request.query.get("n", "5")), float(request.query.get("delay", "0"))
        body = sse_body(n, self.USAGE)
        events = [event + b"\n\n" for event in body.split(b"\n\n") if event]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for event in events:
                await response.write(event)
                if delay:
                    await asyncio.sleep(delay)
            if request.query.get("then") == "hang":
                await asyncio.Event().wait()
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            exchange.outcome = "client-gone"
            raise
        exchange.outcome = "complete"
        return response

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, n = body["model"], int(body.get("max_tokens") or body.get("max_completion_tokens") or 5)
        if not body.get("stream"):
            self._begin(request).outcome = "complete"
            message = {"role": "assistant", "content": " ".join(f"tok{i}" for i in range(n))}
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n},
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await self._stream_events(request, model, openai_chunks(model, n, include_usage))

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, n = body["model"], int(body.get("max_tokens") or 5)
        if not body.get("stream"):
            self._begin(request).outcome = "complete"
            return web.json_response(
                {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": "hi"}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": 9, "output_tokens": n},
                }
            )
        return await self._stream_events(request, model, anthropic_events(model, n))

    async def _stream_events(self, request: web.Request, model: str, events: list[bytes]) -> web.StreamResponse:
        exchange = self._begin(request)
        delay = 0.03 if model.endswith("-slow") else 0.0
        dies_after = len(events) // 2 if model.endswith("-dies") else None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            for index, event in enumerate(events):
                if index == dies_after:
                    assert request.transport is not None
                    request.transport.abort()  # the provider dies mid-stream
                    exchange.outcome = "aborted"
                    return response
                await response.write(event)
                if delay:
                    await asyncio.sleep(delay)
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            exchange.outcome = "client-gone"
            raise
        exchange.outcome = "complete"
        return response


@contextlib.asynccontextmanager
async def origin_server() -> AsyncIterator[Origin]:
    origin = Origin()
    await origin.start()
    try:
        yield origin
    finally:
        await origin.close()


# -- raw clients ----------------------------------------------------------------------------------------------


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def get_then_leave(port: int, path: str, body_bytes: int) -> bytes:
    """A client that sends a GET, reads the head and ``body_bytes`` of the body, then closes its socket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await read_head(reader)
        got = b""
        while len(got) < body_bytes:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                break
            got += data
        return head + got
    finally:
        writer.transport.abort()


def free_socket() -> socket.socket:
    """A listening TCP socket on an ephemeral port of 127.0.0.1 (servers take it over by fd)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def settle(rounds: int = 20) -> None:
    """Let ready callbacks run: a bounded number of loop iterations."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# -- ASGI servers, started in the test's own loop ---------------------------------------------------------------

ASGI_SERVERS = ["uvicorn-httptools", "uvicorn-h11", "hypercorn", "granian"]


@contextlib.asynccontextmanager
async def asgi_server(kind: str, app: Any) -> AsyncIterator[int]:
    """Serve ``app`` with a real server on an ephemeral port of 127.0.0.1; yields the port."""
    sock = free_socket()
    port = sock.getsockname()[1]
    if kind.startswith("uvicorn"):
        import uvicorn

        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="critical",
            access_log=False,
            http=kind.split("-")[1],
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        try:
            await wait_until(lambda: server.started or task.done(), 5, "uvicorn to start")
            yield port
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 5)
            sock.close()
        return
    if kind == "granian":
        sock.close()  # granian binds by address and port: hand it this free one (127.0.0.1 only)
        async with _granian(app, port):
            yield port
        return
    import hypercorn.asyncio
    from hypercorn.config import Config

    config = Config()
    # Hypercorn takes the descriptor over: hand it a duplicate and keep ours out of its way.
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.graceful_timeout = 1
    config.accesslog = None
    config.errorlog = None
    sock.close()
    shutdown = asyncio.Event()
    task = asyncio.ensure_future(hypercorn.asyncio.serve(app, config, shutdown_trigger=shutdown.wait))
    try:
        await _wait_for_listener(port, task)
        yield port
    finally:
        shutdown.set()
        await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def _granian(app: Any, port: int) -> AsyncIterator[None]:
    """Granian (a Rust ASGI server) embedded in the test's loop: the app runs in this loop."""
    from granian.constants import Interfaces
    from granian.server.embed import Server

    server = Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGINL, log_enabled=False)
    task = asyncio.ensure_future(server.serve())
    try:
        await _wait_for_listener(port, task)
        yield
    finally:
        server.stop()
        await asyncio.wait_for(task, 5)


async def _wait_for_listener(port: int, task: asyncio.Future[Any]) -> None:
    deadline = time.monotonic() + 5
    while True:
        if task.done():
            task.result()
            raise AssertionError("the server stopped before it listened")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.01)
            continue
        writer.close()
        await writer.wait_closed()
        return
