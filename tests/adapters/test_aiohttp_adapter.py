"""stream_response under a real aiohttp server: the whole body, drain() backpressure, disconnects, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from types import ModuleType
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from fastpipe.aiohttp import stream_response
from fastpipe.sources import from_aiohttp
from fastpipe.sse import Event, EventTap
from fastpipe.tee import DisconnectPolicy

from ._support import Origin, Owner, Releases, chunks, get_then_leave, origin_server, pattern, piece, wait_until

MakePipe = Callable[[web.Request], Awaitable[Any]]


@contextlib.asynccontextmanager
async def gateway(make: MakePipe, *, handler_cancellation: bool = False, **options: Any) -> AsyncIterator[int]:
    """An aiohttp server whose one route streams the pipe ``make(request)`` returns; yields its port."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await stream_response(request, await make(request), **options)

    app = web.Application()
    app.router.add_route("*", "/", handler)
    runner = web.AppRunner(app, handler_cancellation=handler_cancellation, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        server: Any = site._server
        yield server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with origin_server() as server:
        yield server


async def test_whole_body_arrives_and_the_owner_is_released(impl: ModuleType) -> None:
    releases = Releases()

    async def make(_request: web.Request) -> Any:
        return impl.Pipe(chunks(30, 2000), Owner(), on_release=releases)

    async with gateway(make, headers={"X-Origin": "test"}) as port, aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.headers["X-Origin"] == "test"
            assert await response.read() == pattern(30, 2000)
    assert releases.calls[0][0] == "closed"


async def test_a_client_that_does_not_read_holds_the_upstream_back(impl: ModuleType) -> None:
    """drain() backpressure: with the client's window full, the pipe stops being pulled."""
    total_chunks, size = 2000, 16 * 1024
    pipes: list[Any] = []

    async def make(_request: web.Request) -> Any:
        pipe = impl.Pipe(chunks(total_chunks, size))
        pipes.append(pipe)
        return pipe

    async with gateway(make) as port:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        held_back_at = pipes[0].nbytes
        assert held_back_at < total_chunks * size // 2, f"{held_back_at} bytes pulled for a client reading nothing"
        raw = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert pipes[0].nbytes == total_chunks * size and pipes[0].state == "closed"
    assert len(body) > total_chunks * size  # the whole body, in chunked framing


@pytest.mark.parametrize("handler_cancellation", [False, True])
async def test_client_leaving_releases_an_idle_upstream_within_a_second(
    impl: ModuleType, handler_cancellation: bool
) -> None:
    releases = Releases()

    async def make(_request: web.Request) -> Any:
        return impl.Pipe(chunks(3, 1000, then="hang"), Owner(), on_release=releases)

    async with gateway(make, handler_cancellation=handler_cancellation) as port:
        await get_then_leave(port, "/", 3000)
        left_at = time.monotonic()
        state, released_at = await releases.wait(2)
    assert state == "cancelled"
    assert released_at - left_at < 1.0


async def test_client_leaving_closes_the_upstream_connection(impl: ModuleType, origin: Origin) -> None:
    async with aiohttp.ClientSession() as session:

        async def make(_request: web.Request) -> Any:
            upstream = await session.get(origin.url("/chunks?n=3&size=1000&then=hang"))
            return from_aiohttp(upstream, pipe_type=impl.Pipe)

        async with gateway(make) as port:
            await get_then_leave(port, "/", 3000)
            await wait_until(lambda: origin.exchanges[0].outcome == "client-gone", 1.0, "the upstream to be closed")


async def test_upstream_failure_is_a_broken_response_never_a_clean_end(impl: ModuleType) -> None:
    async def make(_request: web.Request) -> Any:
        return impl.Pipe(chunks(5, 1000, then="fail"))

    async with gateway(make) as port, aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()


@pytest.mark.parametrize(
    ("policy", "handler_cancellation"), [("drain", False), ("drain", True), ("cancel", False), ("cancel", True)]
)
async def test_drain_policy_keeps_the_usage_event_of_a_client_that_left(
    impl: ModuleType, origin: Origin, policy: str, handler_cancellation: bool
) -> None:
    """With ``handler_cancellation`` aiohttp cancels the handler when the client leaves: a drain then
    goes on without it, in the sending task, until its bounds."""
    usage: list[dict[str, int]] = []
    pipes: list[Any] = []

    def on_event(event: Event) -> None:
        if event.data.startswith("{") and (payload := json.loads(event.data)).get("usage"):
            usage.append(payload["usage"])

    on_disconnect = (
        DisconnectPolicy.drain(max_bytes=1 << 20, timeout=5) if policy == "drain" else DisconnectPolicy.cancel()
    )
    async with aiohttp.ClientSession() as session:

        async def make(_request: web.Request) -> Any:
            upstream = await session.get(origin.url("/sse?n=10&delay=0.03"))
            pipe = from_aiohttp(upstream, pipe_type=impl.Pipe).tap(EventTap(on_event))
            pipe.on_disconnect = on_disconnect
            pipes.append(pipe)
            return pipe

        async with gateway(make, handler_cancellation=handler_cancellation) as port:
            await get_then_leave(port, "/", 60)
            await wait_until(lambda: bool(pipes) and pipes[0].state != "open", 3, "the pipe to finish")
    if policy == "drain":
        assert usage == [Origin.USAGE] and pipes[0].state == "closed"
        assert pipes[0].end_reason == "drained"
    else:
        assert usage == [] and pipes[0].state == "cancelled"
        assert pipes[0].end_reason == "client-gone"


async def test_head_request_sends_no_body_and_releases_the_pipe(impl: ModuleType) -> None:
    releases = Releases()

    async def make(_request: web.Request) -> Any:
        return impl.Pipe(chunks(3, 10), Owner(), on_release=releases)

    async with gateway(make) as port, aiohttp.ClientSession() as session:
        async with session.head(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 200
            assert await response.read() == b""
    assert releases.calls[0][0] == "cancelled"


async def test_stream_response_refuses_bad_options(impl: ModuleType) -> None:
    pipe = impl.Pipe(chunks(1, 1))
    request: Any = None  # checked before the request is touched
    with pytest.raises(ValueError, match="disconnect_poll"):
        await stream_response(request, pipe, disconnect_poll=0)
    with pytest.raises(TypeError, match="DisconnectPolicy"):
        await stream_response(request, pipe, on_disconnect="cancel")  # type: ignore[arg-type]


async def test_the_old_on_disconnect_keyword_still_works_with_a_deprecation_warning(impl: ModuleType) -> None:
    pipes: list[Any] = []

    async def make(_request: web.Request) -> Any:
        pipe = impl.Pipe(chunks(3, 1000, then="hang"), Owner())
        pipes.append(pipe)
        return pipe

    drain = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.3)
    with pytest.deprecated_call(match="belongs to the pipe"):
        async with gateway(make, on_disconnect=drain) as port:
            await get_then_leave(port, "/", 3000)
            await wait_until(lambda: bool(pipes) and pipes[0].state != "open", 3, "the pipe to finish")
    assert pipes[0].end_reason == "drain-cut-timeout", "the keyword's drain policy was not applied"


async def test_a_write_to_a_client_that_left_closes_the_source_and_says_client_gone(impl: ModuleType) -> None:
    """The client resets mid-body and the next write fails: the source's ``aclose()`` is awaited (no
    garbage-collector hook does that for a source that is not a generator) and the pipe says why it ended."""
    closed = asyncio.Event()
    pipes: list[Any] = []

    class Endless:
        def __init__(self) -> None:
            self.index = 0

        def __aiter__(self) -> Endless:
            return self

        async def __anext__(self) -> bytes:
            if self.index == 10_000:  # bounded: 640 MB, far more than any buffer holds
                raise StopAsyncIteration
            self.index += 1
            await asyncio.sleep(0)
            return piece(self.index, 65536)

        async def aclose(self) -> None:
            closed.set()

    async def make(_request: web.Request) -> Any:
        pipes.append(impl.Pipe(Endless(), Owner()))
        return pipes[-1]

    # A slow disconnect poll: the failing write is what notices the client left.
    async with gateway(make, disconnect_poll=30) as port:
        await get_then_leave(port, "/", 200_000)
        await asyncio.wait_for(closed.wait(), 2)
        await wait_until(lambda: pipes[0].state != "open", 2, "the pipe to finish")
    assert pipes[0].end_reason == "client-gone"
