"""WebSocket (and other upgrades) through the proxy, with the ``websockets`` library on both ends.

A request whose Connection lists ``upgrade`` goes upstream with Connection and Upgrade kept; a 101 turns the
connection into a tunnel of raw bytes both ways, with flow control, its own idle timeout and a record that
says "upgraded". Anything else is an ordinary response and the connection goes on as HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ._proxy_support import (
    MakeRecordingOrigin,
    RecordingOrigin,
    StartProxy,
    TlsFiles,
    parse_responses,
    raw_exchange,
    small_window_client,
    wait_for,
)

MIB = 1 << 20


async def _echo(ws: ServerConnection) -> None:
    """Echo every message; the path says what else to do."""
    path = ws.request.path if ws.request is not None else "/"
    if path == "/vanish":
        await ws.recv()
        assert ws.transport is not None
        sock = ws.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.transport.abort()  # the upstream dies mid-tunnel: a reset, not a FIN
        return
    if path == "/flood":
        payload = os.urandom(MIB)
        with contextlib.suppress(ConnectionClosed):
            for _ in range(64):
                await ws.send(payload)
        return
    if path == "/close-4002":
        await ws.close(4002, "server says bye")
        return
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            await ws.send(message)


@contextlib.asynccontextmanager
async def ws_origin(**options: Any) -> AsyncIterator[Server]:
    async with serve(_echo, "127.0.0.1", 0, max_size=16 * MIB, compression=None, **options) as server:
        yield server


def _port(server: Server) -> int:
    return int(next(iter(server.sockets)).getsockname()[1])


def _client(url: str, **options: Any) -> Any:
    return connect(url, proxy=None, max_size=16 * MIB, compression=None, open_timeout=10, **options)


@pytest.mark.both_loops
async def test_messages_of_every_kind_cross_the_tunnel(start: StartProxy) -> None:
    async with ws_origin() as origin:
        proxy = await start(_port(origin))
        async with _client(f"ws://127.0.0.1:{proxy.port}/echo") as ws:
            await ws.send("text ✓")
            assert await ws.recv() == "text ✓"
            await ws.send(b"\x00\xffbinary")
            assert await ws.recv() == b"\x00\xffbinary"
            await ws.send(["frag", "mented ", "message"])  # one message in three frames
            assert await ws.recv() == "fragmented message"
            big = os.urandom(8 * MIB)
            await ws.send(big)
            assert await ws.recv() == big
            pong = await ws.ping(b"are you there")
            await asyncio.wait_for(pong, 5)
            await ws.close(4001, "client says bye")
        assert ws.close_code == 4001
    [record] = await proxy.wait_records(1)
    assert (record.status, record.upstream_status, record.end) == (101, 101, "upgraded")
    assert record.request_bytes > 8 * MIB and record.response_bytes > 8 * MIB


@pytest.mark.both_loops
async def test_a_close_code_from_the_server_reaches_the_client(start: StartProxy) -> None:
    async with ws_origin() as origin:
        proxy = await start(_port(origin))
        async with _client(f"ws://127.0.0.1:{proxy.port}/close-4002") as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert (ws.close_code, ws.close_reason) == (4002, "server says bye")


@pytest.mark.both_loops
async def test_an_upstream_that_vanishes_mid_tunnel_closes_the_client(start: StartProxy) -> None:
    async with ws_origin() as origin:
        proxy = await start(_port(origin))
        async with _client(f"ws://127.0.0.1:{proxy.port}/vanish") as ws:
            await ws.send("go")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1006  # abnormal: no close frame, never a clean end
    [record] = await proxy.wait_records(1)
    assert record.status == 101 and record.end == "upstream error"


@pytest.mark.both_loops
async def test_a_client_that_stops_reading_holds_the_proxy_to_its_write_marks(start: StartProxy) -> None:
    high = 256 * 1024
    async with ws_origin() as origin:
        proxy = await start(_port(origin), write_high_water=high, write_low_water=high // 4)
        client = await small_window_client(proxy.port, 16 * 1024)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(
                client,
                b"GET /flood HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            )
            connection = await proxy.only_connection()
            await wait_for(lambda: connection._tunnel is not None, what="the tunnel")
            await asyncio.sleep(1.0)  # the server offers 64 MiB; the client takes none of it
            buffered = connection._transport.get_write_buffer_size()
            delivered = connection._pipe.nbytes
            await asyncio.sleep(0.5)
            assert connection._pipe.nbytes == delivered, "the upstream is still being read"
            assert buffered <= high + MIB + 64 * 1024
            assert delivered < 16 * MIB
        finally:
            client.close()


@pytest.mark.both_loops
async def test_many_tunnels_at_once(start: StartProxy) -> None:
    async with ws_origin() as origin:
        proxy = await start(_port(origin))

        async def chat(index: int) -> list[str]:
            async with _client(f"ws://127.0.0.1:{proxy.port}/echo") as ws:
                replies = []
                for turn in range(5):
                    await ws.send(f"{index}:{turn}")
                    replies.append(str(await ws.recv()))
                return replies

        results = await asyncio.wait_for(asyncio.gather(*(chat(index) for index in range(60))), 60)
    assert results == [[f"{index}:{turn}" for turn in range(5)] for index in range(60)]
    await proxy.wait_records(60)
    assert {record.end for record in proxy.records} == {"upgraded"}


@pytest.mark.both_loops
async def test_websocket_over_tls_on_both_sides(tls_files: TlsFiles) -> None:
    from fastpipe.http import shutdown_proxy, start_proxy

    async with ws_origin(ssl=tls_files.server_context()) as origin:
        server = await start_proxy(
            f"https://127.0.0.1:{_port(origin)}",
            port=0,
            upstream_ca=str(tls_files.ca),
            certfile=str(tls_files.cert),
            keyfile=str(tls_files.key),
        )
        try:
            url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/echo"
            async with _client(url, ssl=tls_files.client_context()) as ws:
                payload = os.urandom(3 * MIB)
                await ws.send(payload)
                assert await ws.recv() == payload
                await ws.send("done")
                assert await ws.recv() == "done"
        finally:
            await shutdown_proxy(server, grace=0.5)


@pytest.mark.both_loops
async def test_an_upgrade_answered_without_101_goes_on_as_http(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        for _ in range(origin.data.count(b"\r\n\r\n") - getattr(origin, "answered", 0)):
            origin.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
        origin.answered = origin.data.count(b"\r\n\r\n")  # type: ignore[attr-defined]

    port, origins = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(
        proxy.port,
        b"GET /ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"GET /next HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert [(r.status, r.body) for r in parse_responses(data)] == [(403, b"no"), (403, b"no")]
    sent = b"".join(origin.data for origin in origins)
    first = sent.split(b"\r\n\r\n")[0]
    assert b"\r\nConnection: upgrade\r\nUpgrade: websocket" in first
    assert b"GET /next HTTP/1.1\r\n" in sent


@pytest.mark.parametrize(
    ("headers", "dropped"),
    [
        (b"Upgrade: websocket\r\n", [b"upgrade"]),  # no Connection: upgrade: a stray hop-by-hop header
        (b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n",
         [b"upgrade", b"http2-settings", b"connection"]),
    ],
    ids=["stray-upgrade", "h2c"],
)  # fmt: skip
async def test_upgrades_the_proxy_does_not_tunnel_go_on_as_ordinary_requests(
    start: StartProxy, recording_origin: MakeRecordingOrigin, headers: bytes, dropped: list[bytes]
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    data = await raw_exchange(
        proxy.port,
        b"GET /plain HTTP/1.1\r\nHost: t\r\n"
        + headers
        + b"\r\nGET /after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert [r.status for r in parse_responses(data)] == [200, 200]
    head = origins[0].data.split(b"\r\n\r\n")[0].lower()
    for name in dropped:
        assert b"\r\n" + name + b":" not in head
    assert b"get /after http/1.1" in origins[0].data.lower()


@pytest.mark.both_loops
async def test_an_idle_tunnel_ends_at_its_own_timeout(start: StartProxy) -> None:
    async with ws_origin() as origin:
        proxy = await start(_port(origin), tunnel_idle_timeout=0.6, idle_timeout=60)
        async with _client(f"ws://127.0.0.1:{proxy.port}/echo", ping_interval=None) as ws:
            for _ in range(4):  # traffic keeps it open past the timeout
                await asyncio.sleep(0.3)
                await ws.send("tick")
                assert await ws.recv() == "tick"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
    [record] = await proxy.wait_records(1)
    assert record.end == "timeout"


async def test_a_tunnel_keeps_working_in_the_grace_period_and_is_cut_at_its_end(start: StartProxy) -> None:
    from fastpipe.http import shutdown_proxy

    async with ws_origin() as origin:
        proxy = await start(_port(origin))
        async with _client(f"ws://127.0.0.1:{proxy.port}/echo", ping_interval=None) as ws:
            shutdown = asyncio.ensure_future(shutdown_proxy(proxy.server, grace=1.0))
            await asyncio.sleep(0.3)
            await ws.send("still here")
            assert await ws.recv() == "still here"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
            await asyncio.wait_for(shutdown, 5)
    assert [record.end for record in proxy.records] == ["shutdown"]


@pytest.mark.both_loops
async def test_a_half_close_crosses_a_plaintext_tunnel_both_ways(start: StartProxy) -> None:
    origin_got: list[bytes] = []

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\nhello")
        origin_got.append(await reader.read())  # up to the client's FIN, passed on by the proxy
        writer.write(b" after the client's FIN")
        writer.write_eof()
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    proxy = await start(server.sockets[0].getsockname()[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET /raw HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\nearly bytes")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ") and b"\r\nUpgrade: raw\r\n" in head
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        writer.write_eof()  # the client is done sending; the upstream may still send
        assert await asyncio.wait_for(reader.read(), 5) == b" after the client's FIN"  # then the upstream's FIN
    finally:
        writer.close()
        server.close()
    assert origin_got == [b"early bytes"]
    [record] = await proxy.wait_records(1)
    assert record.end == "upgraded" and record.request_bytes == len(b"early bytes")
