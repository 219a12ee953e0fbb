"""Memory per connection stays bounded whatever the body size and however slow the peer."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from fastpipe._origin import payload_sha256

from ._proxy_support import MakeRecordingOrigin, RecordingOrigin, StartProxy, small_window_client, wait_for

HIGH = 64 * 1024
READ_SIZE = 256 * 1024  # the most one read of the event loop can bring in


@pytest.mark.both_loops
async def test_slow_reader_pauses_the_upstream_and_still_gets_every_byte(origin_port: int, start: StartProxy) -> None:
    size = 8 * 1024 * 1024
    proxy = await start(origin_port, write_high_water=HIGH, write_low_water=HIGH // 4)
    client = await small_window_client(proxy.port, 64 * 1024)
    loop = asyncio.get_running_loop()
    try:
        request = b"GET /bytes?n=%d&seed=9 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" % size
        await loop.sock_sendall(client, request)
        connection = await proxy.only_connection()
        await wait_for(lambda: connection._pipe is not None and connection._pipe.paused, what="the Pipe paused")
        # While parked: the proxy holds at most its high-water mark plus one read.
        for _ in range(5):
            assert connection._transport.get_write_buffer_size() <= HIGH + READ_SIZE
            await asyncio.sleep(0.02)
        # Now read slowly, then fast; the body must be whole.
        received = bytearray()
        for _ in range(20):
            received += await loop.sock_recv(client, 16 * 1024)
            await asyncio.sleep(0.005)
            assert connection._transport.get_write_buffer_size() <= HIGH + READ_SIZE
        while True:
            data = await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 10)
            if not data:
                break
            received += data
    finally:
        client.close()
    body = bytes(received).split(b"\r\n\r\n", 1)[1]
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == payload_sha256(size, seed=9)


async def test_slow_upstream_pauses_reading_the_request_body(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """An origin that does not read: the proxy stops reading the client instead of buffering the upload."""

    def stall(origin: RecordingOrigin, data: bytes) -> None:
        if len(origin.received) == 1:  # stop reading after the first read, until the test resumes it
            origin.transport.pause_reading()

    port, origins = await recording_origin(stall)
    proxy = await start(port, write_high_water=HIGH, write_low_water=HIGH // 4)
    _, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.transport.set_write_buffer_limits(high=HIGH)
    total = 32 * 1024 * 1024
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
    sent = 0
    piece = b"u" * 65536
    loop = asyncio.get_running_loop()
    stalled_at = loop.time() + 1.0
    try:
        while sent < total and loop.time() < stalled_at:
            writer.write(piece)
            sent += len(piece)
            try:
                await asyncio.wait_for(writer.drain(), 0.2)
            except asyncio.TimeoutError:
                break  # the client is blocked: backpressure went all the way back
        assert sent < total // 2  # far from all of it got anywhere
        connection = await proxy.only_connection()
        assert not connection._transport.is_reading()
        [upstream] = list(proxy.proxy.pool._all)
        assert upstream._transport.get_write_buffer_size() <= HIGH + READ_SIZE
        # Let the origin read again: the upload resumes.
        origins[0].transport.resume_reading()
        await wait_for(lambda: connection._transport.is_reading(), what="reading resumed")
    finally:
        writer.transport.abort()


@pytest.mark.both_loops
async def test_a_body_ending_while_the_client_is_full_leaves_the_pooled_connection_reading(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """The write that carries a body's last bytes can push the client over its high-water mark and so pause
    the upstream just before the body ends; the connection then goes back to the pool and must read again."""
    body = os.urandom(8 * 1024 * 1024)  # more than the sockets hold: the rest waits in the proxy's buffer
    last = os.urandom(64 * 1024)  # one read, sent once that buffer is the only thing left

    def reply(origin: RecordingOrigin, data: bytes) -> None:
        if origin.data.count(b"\r\n\r\n") == 1:
            origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(body) + len(last)) + body)
        else:
            origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")

    port, origins = await recording_origin(reply)
    proxy = await start(port, write_high_water=64 * 1024 * 1024)  # at first, the proxy buffers all of ``body``
    client = await small_window_client(proxy.port, 16 * 1024)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(client, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        connection = await proxy.only_connection()
        await wait_for(lambda: connection._pipe is not None and connection._pipe.nbytes == len(body), what="the body")
        buffered = connection._transport.get_write_buffer_size()
        assert buffered > 0  # the client is full
        # Now the last bytes cross the high-water mark: the pause lands on the body's final write.
        connection._transport.set_write_buffer_limits(high=buffered + 1, low=0)
        origins[0].transport.write(last)
        await wait_for(lambda: proxy.proxy.pool.idle == 1, what="the connection back in the pool")
        [pooled] = proxy.proxy.pool._idle
        assert pooled._transport.is_reading()
        # And end to end: the next request on that connection is answered.
        received = bytearray()
        expected = len(body) + len(last)
        while not received.endswith(last):
            assert len(received) < expected + 1024
            received += await asyncio.wait_for(loop.sock_recv(client, 1 << 20), 5)
        await loop.sock_sendall(client, b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = bytearray()
        while not answer.endswith(b"second"):
            data = await asyncio.wait_for(loop.sock_recv(client, 4096), 5)
            assert data, "the proxy closed the connection"
            answer += data
    finally:
        client.close()
    assert received.split(b"\r\n\r\n", 1)[1] == body + last
    assert proxy.proxy.pool.open == 1 and len(origins) == 1  # one upstream connection served both
