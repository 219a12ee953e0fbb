"""Sources: aiohttp and httpx client responses and asyncio StreamReaders as Pipes, against a real origin.

The hazard in each case: the gateway drops every reference to the client response right after making the
pipe, a full ``gc.collect()`` runs mid-stream, and still the body arrives whole and the connection goes
back to the pool (checked in the pool, and by the origin seeing the next request on the same port).
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import ModuleType
from typing import Any, AsyncIterator

import aiohttp
import httpx
import pytest

from fastpipe.sources import from_aiohttp, from_httpx, from_stream_reader

from ._support import Origin, Owner, Releases, origin_server, pattern, settle, wait_until


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with origin_server() as server:
        yield server


async def read_with_gc(pipe: Any, sizes: list[int] | None = None) -> bytes:
    """Read the whole pipe, with a full collection after the first chunks and every eighth after them."""
    parts = []
    async for chunk in pipe:
        parts.append(bytes(chunk))
        if sizes is not None:
            sizes.append(len(chunk))
        if len(parts) < 3 or len(parts) % 8 == 0:
            gc.collect()
    return b"".join(parts)


# -- aiohttp --------------------------------------------------------------------------------------------------


def aiohttp_pool(session: aiohttp.ClientSession) -> tuple[int, int]:
    """(idle connections kept for reuse, connections checked out) of the session's connector."""
    connector: Any = session.connector
    idle = sum(len(conns) for conns in connector._conns.values())
    return idle, len(connector._acquired)


async def open_aiohttp_pipe(session: aiohttp.ClientSession, url: str, **options: Any) -> Any:
    # The response is reachable from the returned pipe only, as in a gateway that keeps just the body.
    response = await session.get(url)
    return from_aiohttp(response, **options)


@pytest.mark.parametrize("framing", ["chunked", "length"])
@pytest.mark.parametrize("chunk_size", [None, 3000])
async def test_aiohttp_body_is_whole_and_connection_pooled_after_the_response_was_dropped(
    impl: ModuleType, origin: Origin, framing: str, chunk_size: int | None
) -> None:
    async with aiohttp.ClientSession() as session:
        url = origin.url(f"/chunks?n=30&size=5000&delay=0.002&framing={framing}")
        pipe = await open_aiohttp_pipe(session, url, chunk_size=chunk_size, pipe_type=impl.Pipe)
        response = weakref.ref(pipe.owner)
        assert aiohttp_pool(session) == (0, 1)
        sizes: list[int] = []
        body = await read_with_gc(pipe, sizes)
        assert body == pattern(30, 5000)
        assert pipe.state == "closed" and pipe.owner is None
        assert max(sizes) <= (chunk_size or 5000)
        gc.collect()
        assert response() is None
        assert aiohttp_pool(session) == (1, 0), "the connection must be back in the pool, idle"
        async with session.get(origin.url("/chunks?n=1&size=10")) as again:
            await again.read()
        assert origin.exchanges[0].peer_port == origin.exchanges[1].peer_port, "the connection was not reused"


async def test_aiohttp_chunks_respect_chunk_size(impl: ModuleType, origin: Origin) -> None:
    async with aiohttp.ClientSession() as session:
        pipe = await open_aiohttp_pipe(
            session, origin.url("/chunks?n=4&size=10000&framing=length"), chunk_size=3000, pipe_type=impl.Pipe
        )
        sizes = [len(chunk) async for chunk in pipe]
        assert sum(sizes) == 40000
        assert max(sizes) <= 3000


async def test_aiohttp_upstream_failure_errors_the_pipe_and_drops_the_connection(
    impl: ModuleType, origin: Origin
) -> None:
    async with aiohttp.ClientSession() as session:
        pipe = await open_aiohttp_pipe(session, origin.url("/chunks?n=5&size=1000&then=abort"), pipe_type=impl.Pipe)
        got = 0
        with pytest.raises(aiohttp.ClientPayloadError):
            async for chunk in pipe:
                got += len(chunk)
        assert got == 5000
        assert pipe.state == "errored"
        assert aiohttp_pool(session) == (0, 0), "a broken connection must not go back to the pool"


@pytest.mark.parametrize("how", ["aclose", "task-cancelled", "cancel"])
async def test_aiohttp_cancel_closes_the_connection_and_the_origin_sees_it(
    impl: ModuleType, origin: Origin, how: str
) -> None:
    async with aiohttp.ClientSession() as session:
        pipe = await open_aiohttp_pipe(session, origin.url("/chunks?n=3&size=1000&then=hang"), pipe_type=impl.Pipe)
        for _ in range(3):
            await pipe.__anext__()
        if how == "aclose":
            await pipe.aclose()
        elif how == "cancel":
            pipe.cancel()
        else:
            pending = asyncio.ensure_future(pipe.__anext__())
            await settle()
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
        assert pipe.state == "cancelled" and pipe.owner is None
        assert aiohttp_pool(session) == (0, 0)
        await wait_until(lambda: origin.exchanges[0].outcome == "client-gone", 1.0, "the origin to see the close")


async def test_aiohttp_naive_cancel_keeps_the_connection_checked_out(impl: ModuleType, origin: Origin) -> None:
    """Negative control: a Pipe over ``resp.content`` without the response as owner cannot close it.

    Cancelled mid-body, the connection stays checked out and the upstream keeps streaming to a reader
    that is gone (for an endless stream: forever). ``from_aiohttp`` closes it (test above).
    """
    async with aiohttp.ClientSession() as session:
        response = await session.get(origin.url("/chunks?n=3&size=1000&then=hang"))
        naive = impl.Pipe(response.content.iter_chunked(4096))
        del response
        await naive.__anext__()
        await naive.aclose()
        gc.collect()
        await asyncio.sleep(0.3)
        assert aiohttp_pool(session) == (0, 1), "the connection is still checked out"
        assert origin.exchanges[0].outcome == "streaming", "the origin never learned the reader left"


async def test_aiohttp_keeps_a_dropped_response_alive_from_its_own_content(impl: ModuleType, origin: Origin) -> None:
    """Control, on purpose: aiohttp itself does *not* lose data when only ``resp.content`` is kept.

    ``ClientResponse`` registers ``payload.on_eof(self._response_eof)``, so the content stream holds the
    response until EOF and its ``__del__`` cannot close the connection mid-body. If a future aiohttp
    drops that reference, this test fails and from_aiohttp's owner becomes the only thing that saves
    the body (the test above it stays green).
    """
    async with aiohttp.ClientSession() as session:
        response = await session.get(origin.url("/chunks?n=20&size=2000&delay=0.002"))
        alive = weakref.ref(response)
        naive = impl.Pipe(response.content.iter_chunked(4096))
        del response
        body = await read_with_gc(naive)
        assert body == pattern(20, 2000)
        gc.collect()
        assert alive() is None


# -- httpx ----------------------------------------------------------------------------------------------------


def httpx_pool(client: httpx.AsyncClient) -> list[str]:
    """The state of each pooled connection: "idle", "busy" or "closed"."""
    pool: Any = client._transport._pool  # type: ignore[attr-defined]
    return ["closed" if c.is_closed() else "idle" if c.is_idle() else "busy" for c in pool.connections]


async def open_httpx_pipe(client: httpx.AsyncClient, url: str, **options: Any) -> Any:
    response = await client.send(client.build_request("GET", url), stream=True)
    return from_httpx(response, **options)


@pytest.mark.parametrize("chunk_size", [None, 3000])
async def test_httpx_body_is_whole_and_connection_pooled_after_the_response_was_dropped(
    impl: ModuleType, origin: Origin, chunk_size: int | None
) -> None:
    async with httpx.AsyncClient() as client:
        pipe = await open_httpx_pipe(
            client, origin.url("/chunks?n=30&size=5000&delay=0.002"), chunk_size=chunk_size, pipe_type=impl.Pipe
        )
        response = weakref.ref(pipe.owner)
        assert httpx_pool(client) == ["busy"]
        body = await read_with_gc(pipe)
        assert body == pattern(30, 5000)
        assert pipe.state == "closed"
        gc.collect()
        assert response() is None
        assert httpx_pool(client) == ["idle"]
        await client.get(origin.url("/chunks?n=1&size=10"))
        assert origin.exchanges[0].peer_port == origin.exchanges[1].peer_port, "the connection was not reused"


async def test_httpx_upstream_failure_errors_the_pipe_and_drops_the_connection(
    impl: ModuleType, origin: Origin
) -> None:
    async with httpx.AsyncClient() as client:
        pipe = await open_httpx_pipe(client, origin.url("/chunks?n=5&size=1000&then=abort"), pipe_type=impl.Pipe)
        response = pipe.owner
        with pytest.raises(httpx.RemoteProtocolError):
            async for _chunk in pipe:
                pass
        assert pipe.state == "errored"
        assert response.is_closed
        assert httpx_pool(client) == []


@pytest.mark.parametrize("how", ["aclose-before-pull", "aclose", "task-cancelled", "cancel"])
async def test_httpx_every_cancel_path_closes_the_response(impl: ModuleType, origin: Origin, how: str) -> None:
    async with httpx.AsyncClient() as client:
        pipe = await open_httpx_pipe(client, origin.url("/chunks?n=3&size=1000&then=hang"), pipe_type=impl.Pipe)
        response = pipe.owner
        if how != "aclose-before-pull":
            for _ in range(3):
                await pipe.__anext__()
        if how in ("aclose", "aclose-before-pull"):
            await pipe.aclose()
        elif how == "cancel":
            pipe.cancel()  # synchronous: the close is scheduled on the loop
            await settle()
        else:
            pending = asyncio.ensure_future(pipe.__anext__())
            await settle()
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
        assert pipe.state == "cancelled"
        assert response.is_closed
        assert httpx_pool(client) == [], "a half-read connection must leave the pool"
        await wait_until(lambda: origin.exchanges[0].outcome == "client-gone", 1.0, "the origin to see the close")


async def test_from_httpx_refuses_a_read_response(impl: ModuleType, origin: Origin) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.get(origin.url("/chunks?n=1&size=10"))
        with pytest.raises(ValueError, match="streaming response"):
            from_httpx(response, pipe_type=impl.Pipe)


# -- asyncio StreamReader -------------------------------------------------------------------------------------


async def serve_bytes(data: bytes) -> tuple[asyncio.Server, int]:
    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_stream_reader_is_read_in_chunks_not_lines(impl: ModuleType) -> None:
    data = b"line one\nline two\n" * 5000 + b"no newline at the end"
    server, port = await serve_bytes(data)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        owner = Owner()
        releases = Releases()
        pipe = from_stream_reader(reader, owner, chunk_size=4096, on_release=releases, pipe_type=impl.Pipe)
        assert pipe.owner is owner
        got = [chunk async for chunk in pipe]
        writer.close()
        assert b"".join(got) == data
        assert max(len(chunk) for chunk in got) <= 4096
        assert any(not chunk.endswith(b"\n") for chunk in got[:-1]), "chunks must not follow lines"
        assert releases.calls[0][0] == "closed" and pipe.owner is None


async def test_stream_reader_with_length_stops_after_it(impl: ModuleType) -> None:
    server, port = await serve_bytes(b"x" * 10000 + b"NEXT MESSAGE")
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        pipe = from_stream_reader(reader, chunk_size=3000, length=10000, pipe_type=impl.Pipe)
        assert b"".join([chunk async for chunk in pipe]) == b"x" * 10000
        assert await reader.read() == b"NEXT MESSAGE"
        writer.close()


async def test_stream_reader_short_of_length_is_an_error_not_a_clean_end(impl: ModuleType) -> None:
    server, port = await serve_bytes(b"x" * 700)
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        pipe = from_stream_reader(reader, length=1000, pipe_type=impl.Pipe)
        with pytest.raises(asyncio.IncompleteReadError, match="300 bytes before the 1000 expected"):
            async for _chunk in pipe:
                pass
        assert pipe.state == "errored"
        writer.close()


async def test_sources_refuse_bad_sizes() -> None:
    reader = asyncio.StreamReader()
    with pytest.raises(ValueError, match="chunk_size"):
        from_stream_reader(reader, chunk_size=0)
    with pytest.raises(ValueError, match="length"):
        from_stream_reader(reader, length=-1)


# -- owner=: the LiteLLM shape, where the handler's finalizer closes the stream -----------------------------


class PerRequestHandler:
    """The shape LiteLLM hit: a per-request handler makes its own client, and its finalizer closes that
    client. Nothing the response holds leads back to the handler, so keeping the response is not enough."""

    def __init__(self, library: str) -> None:
        self.library = library
        self.client: Any = httpx.AsyncClient() if library == "httpx" else aiohttp.ClientSession()
        self.loop = asyncio.get_running_loop()

    async def stream(self, url: str, impl: ModuleType, keep_handler: bool) -> Any:
        owner = self if keep_handler else None
        if self.library == "httpx":
            response = await self.client.send(self.client.build_request("GET", url), stream=True)
            return from_httpx(response, owner=owner, pipe_type=impl.Pipe)
        return from_aiohttp(await self.client.get(url), owner=owner, pipe_type=impl.Pipe)

    def __del__(self) -> None:
        close = self.client.aclose() if self.library == "httpx" else self.client.close()
        task = self.loop.create_task(close)
        FINALIZER_CLOSES.add(task)
        task.add_done_callback(FINALIZER_CLOSES.discard)


FINALIZER_CLOSES: set[asyncio.Task[None]] = set()


async def gateway_stream(url: str, impl: ModuleType, library: str, keep_handler: bool) -> Any:
    """The gateway hands on the pipe only: the handler that made the request is dropped on return."""
    return await PerRequestHandler(library).stream(url, impl, keep_handler)


async def read_under_forced_gc(pipe: Any) -> tuple[bytes, BaseException | None]:
    """Read the whole pipe while another task runs ``gc.collect()`` every 5 ms."""

    async def collect() -> None:
        for _ in range(2000):  # bounded: 10 s at most
            gc.collect()
            await asyncio.sleep(0.005)

    collector = asyncio.ensure_future(collect())
    parts: list[bytes] = []
    try:
        async for chunk in pipe:
            parts.append(bytes(chunk))
    except Exception as exc:
        return b"".join(parts), exc
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
    return b"".join(parts), None


@pytest.mark.parametrize("library", ["httpx", "aiohttp"])
@pytest.mark.parametrize("keep_handler", [True, False], ids=["owner=handler", "no-owner"])
async def test_owner_keeps_a_per_request_handler_alive_under_forced_gc(
    impl: ModuleType, origin: Origin, library: str, keep_handler: bool
) -> None:
    """With ``owner=handler`` the body arrives whole; the negative control (no owner) loses the stream:
    httpx fails the read, aiohttp leaves it hanging (bounded here: a hang counts as lost)."""
    url = origin.url("/chunks?n=40&size=2000&delay=0.005")
    FINALIZER_CLOSES.clear()
    pipe = await gateway_stream(url, impl, library, keep_handler)
    try:
        body, error = await asyncio.wait_for(read_under_forced_gc(pipe), 20 if keep_handler else 3)
    except asyncio.TimeoutError as exc:
        body, error = b"", exc
    await asyncio.gather(*FINALIZER_CLOSES, return_exceptions=True)
    if keep_handler:
        assert error is None and body == pattern(40, 2000)
        assert pipe.state == "closed" and pipe.owner is None
        gc.collect()
        await settle()
        await asyncio.gather(*FINALIZER_CLOSES, return_exceptions=True)  # the handler went after the body
        return
    assert error is not None or body != pattern(40, 2000), "negative control: the handler's finalizer should cut it"
    assert len(body) < 40 * 2000
    assert pipe.state in ("errored", "cancelled")


async def test_owner_may_be_several_objects_and_pipe_owner_shows_them_all(impl: ModuleType, origin: Origin) -> None:
    handler, client_ref = Owner("handler"), Owner("client")
    alive = [weakref.ref(handler), weakref.ref(client_ref)]
    async with httpx.AsyncClient() as client:
        response = await client.send(client.build_request("GET", origin.url("/chunks?n=3&size=10")), stream=True)
        pipe = from_httpx(response, owner=(handler, client_ref), pipe_type=impl.Pipe)
        assert pipe.owner == (response, handler, client_ref)
        del handler, client_ref, response
        gc.collect()
        assert all(ref() is not None for ref in alive)
        assert b"".join([chunk async for chunk in pipe]) == pattern(3, 10)
        gc.collect()
        assert all(ref() is None for ref in alive)
    async with aiohttp.ClientSession() as session:
        single = Owner("single")
        upstream = await session.get(origin.url("/chunks?n=1&size=10"))
        aio_pipe = from_aiohttp(upstream, owner=single, pipe_type=impl.Pipe)
        assert aio_pipe.owner == (upstream, single)
        await aio_pipe.aclose()
