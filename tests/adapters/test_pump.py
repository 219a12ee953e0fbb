"""pump(): a Pipe written to a plain asyncio transport, on the pull face and on the push face.

Real sockets on 127.0.0.1 throughout: a server whose protocol derives from FlowProtocol pumps a body to
a raw client; for the push face the body comes from a real upstream connection whose protocol feeds a
pushed pipe with the transport as its producer (so flow control pauses the upstream socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from types import ModuleType
from typing import Any, AsyncIterator, Callable

import pytest

from fastpipe.pump import FlowProtocol, pump
from fastpipe.tee import CANCEL, DisconnectPolicy

from ._support import Owner, Releases, UpstreamBroke, chunks, pattern, wait_until

# -- the upstream, for pushed pipes ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_origin(body: bytes, *, then: str = "close") -> AsyncIterator[int]:
    """Sends ``body`` to whoever connects, then closes (or, with then="hang", waits; "reset": aborts)."""
    done = asyncio.Event()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            if then == "hang":
                await done.wait()
        if then == "reset":
            reset(writer)
        else:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        done.set()
        server.close()
        await server.wait_closed()


class Upstream(asyncio.Protocol):
    """Feeds a pushed pipe from a socket; the transport is the producer the pipe pauses and resumes."""

    def __init__(self, impl: ModuleType, releases: Releases) -> None:
        self.impl = impl
        self.releases = releases
        self.pipe: Any = None
        self.fed = 0
        self.refused = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.pipe = self.impl.Pipe.pushed(self, producer=transport, on_release=self.releases)

    def data_received(self, data: bytes) -> None:
        self.fed += len(data)
        if not self.pipe.feed(data):
            self.refused += 1
            self.transport.close()  # the consumer is gone: so is our reason to read

    def eof_received(self) -> None:
        if self.pipe.state in ("idle", "open"):
            self.pipe.feed_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.pipe.state in ("idle", "open"):
            self.pipe.feed_error(exc)


async def open_upstream(impl: ModuleType, port: int, releases: Releases) -> Upstream:
    loop = asyncio.get_running_loop()
    _transport, upstream = await loop.create_connection(lambda: Upstream(impl, releases), "127.0.0.1", port)
    return upstream


# -- the server that pumps, and its clients -------------------------------------------------------------------


class Pumping(FlowProtocol):
    """Pumps ``make()`` to each connection, then closes it (or aborts it when the body failed)."""

    def __init__(self, make: Callable[[], Any], outcomes: list[Any], policy: DisconnectPolicy) -> None:
        self.make = make
        self.outcomes = outcomes
        self.policy = policy

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.task = asyncio.ensure_future(self.serve())

    async def serve(self) -> None:
        pipe = await self.make()
        pipe.on_disconnect = self.policy  # the policy belongs to the pipe; pump() honours it
        try:
            complete = await pump(pipe, self.transport)
        except Exception as exc:
            self.outcomes.append(exc)
            self.transport.abort()
            return
        self.outcomes.append(complete)
        self.transport.close()


@contextlib.asynccontextmanager
async def pumping_server(
    make: Callable[[], Any], policy: DisconnectPolicy = CANCEL
) -> AsyncIterator[tuple[int, list[Any]]]:
    outcomes: list[Any] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Pumping(make, outcomes, policy), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], outcomes
    finally:
        server.close()
        await server.wait_closed()


async def read_all(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN: the peer's next read fails at once."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def read_then_leave(port: int, nbytes: int, *, with_reset: bool = False) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = 0
    while got < nbytes:
        data = await asyncio.wait_for(reader.read(65536), 5)
        if not data:
            break
        got += len(data)
    if with_reset:
        reset(writer)
    else:
        writer.transport.abort()


async def stalled_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client with a small receive window that reads nothing until told to."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


BIG = 2000 * 16 * 1024  # far more than the kernel buffers between a stalled client and the server


# -- the pull face --------------------------------------------------------------------------------------------


async def test_pulled_pipe_is_written_whole(impl: ModuleType) -> None:
    releases = Releases()

    async def make() -> Any:
        return impl.Pipe(chunks(50, 3000), Owner(), on_release=releases)

    async with pumping_server(make) as (port, outcomes):
        assert await read_all(port) == pattern(50, 3000)
    assert outcomes == [True]
    assert releases.calls[0][0] == "closed"


async def test_pulled_pipe_waits_for_the_transport_to_drain(impl: ModuleType) -> None:
    pipes: list[Any] = []

    async def make() -> Any:
        pipes.append(impl.Pipe(chunks(BIG // 16384, 16384)))
        return pipes[0]

    async with pumping_server(make) as (port, outcomes):
        reader, writer = await stalled_client(port)
        await asyncio.sleep(0.4)
        assert pipes[0].nbytes < BIG // 2, "pulled on while the transport was paused"
        body = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert len(body) == BIG and outcomes == [True]


async def test_pulled_pipe_released_within_a_second_of_the_client_leaving(impl: ModuleType) -> None:
    releases = Releases()

    async def make() -> Any:
        return impl.Pipe(chunks(3, 1000, then="hang"), Owner(), on_release=releases)

    async with pumping_server(make) as (port, outcomes):
        await read_then_leave(port, 3000)
        left_at = time.monotonic()
        state, released_at = await releases.wait(2)
        await wait_until(lambda: bool(outcomes), 1, "pump() to return")
    assert state == "cancelled" and released_at - left_at < 1.0
    assert outcomes == [False]


async def test_pulled_pipe_failure_propagates_from_pump(impl: ModuleType) -> None:
    async def make() -> Any:
        return impl.Pipe(chunks(3, 1000, then="fail"))

    async with pumping_server(make) as (port, outcomes):
        with contextlib.suppress(ConnectionError):
            await read_all(port)
        await wait_until(lambda: bool(outcomes), 1, "pump() to return")
    assert isinstance(outcomes[0], UpstreamBroke)


async def test_pulled_pipe_drain_policy_reads_on_within_the_byte_bound(impl: ModuleType) -> None:
    pipes: list[Any] = []

    async def make() -> Any:
        pipes.append(impl.Pipe(chunks(10_000, 1000, delay=0.0005)))
        return pipes[0]

    policy = DisconnectPolicy.drain(max_bytes=30_000, timeout=10)
    async with pumping_server(make, policy) as (port, outcomes):
        await read_then_leave(port, 5000)
        await wait_until(lambda: bool(outcomes), 5, "pump() to return")
    assert outcomes == [False]
    assert pipes[0].state == "cancelled"
    assert pipes[0].end_reason == "drain-cut-max-bytes"
    assert pipes[0].nbytes < 600_000  # kernel buffers before the disconnect is seen, plus the bound


async def test_stream_writer_is_a_pump_target(impl: ModuleType) -> None:
    outcomes: list[bool] = []

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        outcomes.append(await pump(impl.Pipe(chunks(40, 2000)), writer))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        assert await read_all(server.sockets[0].getsockname()[1]) == pattern(40, 2000)
    assert outcomes == [True]


async def test_stream_writer_client_leaving_releases_the_pipe(impl: ModuleType) -> None:
    """asyncio streams keep a half-closed connection open (StreamReaderProtocol.eof_received returns
    True), so with a StreamWriter a client's FIN is noticed at the next write; a reset at once."""
    releases = Releases()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await pump(impl.Pipe(chunks(3, 1000, then="hang"), Owner(), on_release=releases), writer)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        await read_then_leave(server.sockets[0].getsockname()[1], 3000, with_reset=True)
        left_at = time.monotonic()
        state, released_at = await releases.wait(2)
    assert state == "cancelled" and released_at - left_at < 1.0


# -- the push face --------------------------------------------------------------------------------------------


async def test_pushed_pipe_relays_an_upstream_socket_whole(impl: ModuleType) -> None:
    releases = Releases()
    body = pattern(200, 1000)
    async with raw_origin(body) as origin_port:

        async def make() -> Any:
            return (await open_upstream(impl, origin_port, releases)).pipe

        async with pumping_server(make) as (port, outcomes):
            assert await read_all(port) == body
    assert outcomes == [True]
    assert releases.calls[0][0] == "closed"


async def test_pushed_pipe_pauses_the_upstream_socket_while_the_client_is_stalled(impl: ModuleType) -> None:
    body = pattern(BIG // 16384, 16384)
    upstreams: list[Upstream] = []
    async with raw_origin(body) as origin_port:

        async def make() -> Any:
            upstreams.append(await open_upstream(impl, origin_port, Releases()))
            return upstreams[0].pipe

        async with pumping_server(make) as (port, outcomes):
            reader, writer = await stalled_client(port)
            await wait_until(lambda: bool(upstreams) and upstreams[0].pipe.paused, 3, "the upstream to be paused")
            await asyncio.sleep(0.2)
            assert upstreams[0].fed < BIG // 2, "the upstream kept being read while the client was stalled"
            received = await asyncio.wait_for(reader.read(), 10)
            writer.close()
    assert received == body and outcomes == [True]


async def test_pushed_pipe_client_leaving_cancels_it_and_stops_the_upstream(impl: ModuleType) -> None:
    releases = Releases()
    upstreams: list[Upstream] = []
    async with raw_origin(pattern(5, 1000), then="hang") as origin_port:

        async def make() -> Any:
            upstreams.append(await open_upstream(impl, origin_port, releases))
            return upstreams[0].pipe

        async with pumping_server(make) as (port, outcomes):
            await read_then_leave(port, 5000)
            left_at = time.monotonic()
            state, released_at = await releases.wait(2)
            await wait_until(lambda: bool(outcomes), 1, "pump() to return")
    assert state == "cancelled" and released_at - left_at < 1.0
    assert outcomes == [False]


async def test_pushed_pipe_failure_propagates_from_pump(impl: ModuleType) -> None:
    async with raw_origin(pattern(5, 1000), then="reset") as origin_port:

        async def make() -> Any:
            return (await open_upstream(impl, origin_port, Releases())).pipe

        async with pumping_server(make) as (port, outcomes):
            with contextlib.suppress(ConnectionError):
                await read_all(port)
            await wait_until(lambda: bool(outcomes), 2, "pump() to return")
    assert isinstance(outcomes[0], ConnectionError)


async def test_pushed_pipe_drain_policy_keeps_feeding_its_taps(impl: ModuleType) -> None:
    seen: list[int] = []
    upstreams: list[Upstream] = []
    body = pattern(300, 1000)
    async with raw_origin(body, then="hang") as origin_port:

        async def make() -> Any:
            upstreams.append(await open_upstream(impl, origin_port, Releases()))
            return upstreams[0].pipe.tap(lambda chunk: seen.append(len(chunk)))

        policy = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.3)
        async with pumping_server(make, policy) as (port, outcomes):
            await read_then_leave(port, 1000)
            await wait_until(lambda: bool(outcomes), 2, "pump() to return")
    assert sum(seen) == len(body), "the taps must see the whole upstream body after the client left"
    assert outcomes == [False]
    assert upstreams[0].pipe.state == "cancelled"  # the upstream hung: the time bound ended it
    assert upstreams[0].pipe.end_reason == "drain-cut-timeout"


# -- misuse ---------------------------------------------------------------------------------------------------


async def test_pump_needs_a_flow_protocol(impl: ModuleType) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    async with server:
        transport, _protocol = await loop.create_connection(asyncio.Protocol, *server.sockets[0].getsockname())
        pipe = impl.Pipe(chunks(1, 1))
        with pytest.raises(TypeError, match="FlowProtocol"):
            await pump(pipe, transport)
        transport.close()


# -- a tee's primary on the push face -------------------------------------------------------------------------


async def test_tee_primary_pumped_on_the_push_face_paces_the_source(impl: ModuleType) -> None:
    """pump() connects the primary branch (a pushed pipe): a stalled client pauses the tee's reader, and
    the secondary still gets every chunk."""
    from fastpipe.tee import tee

    total = BIG // 16384
    sources: list[Any] = []
    side_results: list[int] = []
    side_tasks: list[asyncio.Future[None]] = []

    async def read_side(side: Any) -> None:
        side_results.append(sum([len(chunk) async for chunk in side]))

    async def make() -> Any:
        source = impl.Pipe(chunks(total, 16384))
        sources.append(source)
        primary, side = tee(source, 2, max_buffer=BIG)
        side_tasks.append(asyncio.ensure_future(read_side(side)))
        return primary

    async with pumping_server(make) as (port, outcomes):
        reader, writer = await stalled_client(port)
        await asyncio.sleep(0.4)
        assert sources[0].nbytes < BIG // 2, "the tee read on while the client was stalled"
        body = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await wait_until(lambda: bool(side_results), 2, "the secondary to finish")
    assert len(body) == BIG and outcomes == [True]
    assert side_results == [BIG]
