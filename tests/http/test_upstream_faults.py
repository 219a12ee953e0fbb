"""Upstream faults: refused, slow, dying mid-body, malformed; and clients that vanish mid-body."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from ._proxy_support import (
    MakeRecordingOrigin,
    ProxyUnderTest,
    RecordingOrigin,
    StartProxy,
    parse_responses,
    raw_exchange,
    small_window_client,
    wait_for,
)


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.both_loops
async def test_refused_upstream_is_502(start: StartProxy) -> None:
    proxy = await start(_unused_port())
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502")
    [record] = await proxy.wait_records(1)
    assert (record.status, record.upstream_status, record.end) == (502, None, "upstream error")


async def test_upstream_head_timeout_is_504(origin_port: int, start: StartProxy) -> None:
    proxy = await start(origin_port, upstream_timeout=0.3)
    loop = asyncio.get_running_loop()
    began = loop.time()
    data = await raw_exchange(proxy.port, b"GET /slow?delay=5 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 504")
    assert loop.time() - began < 2.0
    [record] = await proxy.wait_records(1)
    assert record.end == "timeout"
    await wait_for(lambda: proxy.proxy.pool.open == 0, what="the late upstream connection closed")


async def test_connect_timeout_is_504(start: StartProxy) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so connecting hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.1)
        proxy = await start(port, connect_timeout=0.3)
        data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 504")
        [record] = await proxy.wait_records(1)
        assert record.end == "timeout"
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.both_loops
async def test_upstream_dying_mid_body_truncates_a_content_length_response(proxied: ProxyUnderTest) -> None:
    data = await raw_exchange(proxied.port, b"GET /die?n=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
    [response] = parse_responses(data)
    assert response.status == 200 and response.header(b"Content-Length") == b"2000"
    assert len(response.body) == 1000 and not response.complete  # fewer bytes than announced, then close
    [record] = await proxied.wait_records(1)
    assert record.end == "upstream error"


@pytest.mark.both_loops
async def test_upstream_dying_mid_body_truncates_a_chunked_response(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        asyncio.get_running_loop().call_later(0.05, origin.transport.abort)

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    [response] = parse_responses(data)
    assert response.body == b"hello" and not response.complete  # no last chunk: never a clean end
    assert not data.endswith(b"0\r\n\r\n")


async def test_malformed_upstream_response_is_502(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(b"SMTP ready\r\n\r\n")

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502")


@pytest.mark.parametrize("length", [b"9223372036854775808", b"18446744073709551615"])
async def test_a_response_length_past_what_the_proxy_counts_is_502(
    start: StartProxy, recording_origin: MakeRecordingOrigin, length: bytes
) -> None:
    """llhttp takes lengths up to 2**64 - 1; the proxy counts a body in a Py_ssize_t."""

    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nab")

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502") and b"Content-Length too large" in data


async def test_upstream_closing_without_answer_is_502(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.close()

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
    assert data.startswith(b"HTTP/1.1 502")


async def test_bytes_after_a_complete_response_are_not_forwarded(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"
        )

    port, origins = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    [response] = parse_responses(data)
    assert response.body == b"abc" and b"evil" not in data
    await asyncio.wait_for(origins[0].closed, 2)  # a desynchronised connection is never pooled


async def test_client_gone_mid_body_closes_the_upstream_within_a_second(proxied: ProxyUnderTest) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    writer.write(b"GET /tokens?n=1000&delay=0.01 HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"data: "), 5)
    pool = proxied.proxy.pool
    assert pool.open == 1
    loop = asyncio.get_running_loop()
    gone = loop.time()
    writer.close()
    await writer.wait_closed()
    [record] = await proxied.wait_records(1)
    assert record.end == "client gone"
    await wait_for(lambda: pool.open == 0, timeout=1.0, what="upstream connection closed")
    assert loop.time() - gone < 1.0
    assert pool.idle == 0


async def test_writer_parked_on_backpressure_fails_cleanly_when_the_client_vanishes(
    origin_port: int, start: StartProxy
) -> None:
    """The client stops reading (the proxy parks on backpressure), then resets: nothing may hang."""
    proxy = await start(origin_port, write_high_water=64 * 1024, write_low_water=16 * 1024)
    client = await small_window_client(proxy.port, 32 * 1024)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(client, b"GET /bytes?n=100000000 HTTP/1.1\r\nHost: t\r\n\r\n")
    connection = await proxy.only_connection()
    await wait_for(lambda: connection._pipe is not None and connection._pipe.paused, what="the Pipe paused")
    buffered = connection._transport.get_write_buffer_size()
    assert buffered <= 64 * 1024 + 256 * 1024  # high water plus at most one upstream read
    # Vanish with a reset while the proxy is parked.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    [record] = await proxy.wait_records(1)
    assert record.end == "client gone"
    assert 0 < record.response_bytes < 100_000_000
    await wait_for(lambda: proxy.proxy.pool.open == 0, timeout=1.0, what="upstream connection closed")
    assert not proxy.proxy.connections


async def test_upstream_timeout_runs_from_the_end_of_a_slow_upload(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """An upload that takes longer than upstream_timeout is not cut: the clock starts when it ends."""

    def answer_when_whole(origin: RecordingOrigin, data: bytes) -> None:
        if origin.data.endswith(b"9" * 10):
            origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    port, _ = await recording_origin(answer_when_whole)
    proxy = await start(port, upstream_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        for digit in b"0123456789":  # 10 x 10 bytes over about 0.6 s, twice the timeout
            writer.write(bytes([digit]) * 10)
            await writer.drain()
            await asyncio.sleep(0.06)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_client_that_stops_reading_is_cut_after_the_idle_timeout(origin_port: int, start: StartProxy) -> None:
    proxy = await start(origin_port, idle_timeout=0.4, write_high_water=64 * 1024, write_low_water=16 * 1024)
    client = await small_window_client(proxy.port, 32 * 1024)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(client, b"GET /bytes?n=100000000 HTTP/1.1\r\nHost: t\r\n\r\n")
        [record] = await proxy.wait_records(1, timeout=5)  # never reads: parked, then cut
    finally:
        client.close()
    assert record.end == "timeout" and record.response_bytes < 100_000_000
    await wait_for(lambda: proxy.proxy.pool.open == 0, timeout=1.0, what="upstream connection closed")


async def test_http10_client_sees_a_reset_when_a_close_delimited_body_is_cut(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """No framing tells an HTTP/1.0 client that the body ended early: only a reset can say so."""

    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        asyncio.get_running_loop().call_later(0.05, _reset_transport, origin.transport)

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()


def _reset_transport(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]
