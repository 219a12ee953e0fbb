"""The per-exchange record, the access log, and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from fastpipe.http import ExchangeRecord, shutdown_proxy, start_proxy

from ._proxy_support import MakeRecordingOrigin, ProxyUnderTest, StartProxy, wait_for


async def test_record_of_a_download(proxied: ProxyUnderTest) -> None:
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        response = await client.get("/bytes?n=300000&chunk=30000")
    assert response.status_code == 200
    [record] = await proxied.wait_records(1)
    assert isinstance(record, ExchangeRecord)
    assert (record.method, record.target, record.client) == ("GET", "/bytes?n=300000&chunk=30000", "127.0.0.1")
    assert (record.status, record.upstream_status, record.end) == (200, 200, "complete")
    assert record.response_bytes == 300_000 and record.response_chunks >= 1
    assert record.request_bytes == 0 and record.request_chunks == 0
    assert record.ttfb is not None and 0 <= record.ttfb <= record.duration < 5


async def test_record_of_an_upload_counts_request_bytes(proxied: ProxyUnderTest) -> None:
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        response = await client.post("/echo", content=b"z" * 70_000)
    assert len(response.content) == 70_000
    [record] = await proxied.wait_records(1)
    assert record.request_bytes == 70_000 and record.request_chunks >= 1
    assert record.method == "POST" and record.end == "complete"


async def test_access_log_writes_one_line_per_exchange(origin_port: int, caplog: pytest.LogCaptureFixture) -> None:
    server = await start_proxy(f"http://127.0.0.1:{origin_port}", port=0, access_log=True)
    port = server.sockets[0].getsockname()[1]
    try:
        with caplog.at_level(logging.INFO, logger="fastpipe.access"):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                await client.get("/bytes?n=10")
                await client.get("/status/404")
            await wait_for(lambda: len(caplog.records) >= 2, what="two access lines")
    finally:
        await shutdown_proxy(server, 0.5)
    lines = [record.getMessage() for record in caplog.records if record.name == "fastpipe.access"]
    assert len(lines) == 2
    assert '"GET /bytes?n=10" 200' in lines[0] and "end=complete" in lines[0]
    assert '"GET /status/404" 404' in lines[1]


async def test_a_failing_hook_is_reported_and_the_stream_goes_on(origin_port: int) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))

    def broken_hook(record: ExchangeRecord) -> None:
        raise RuntimeError("metrics are down")

    server = await start_proxy(f"http://127.0.0.1:{origin_port}", port=0, on_exchange=broken_hook)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            first = await client.get("/bytes?n=1000")
            second = await client.get("/bytes?n=1000")
    finally:
        await shutdown_proxy(server, 0.5)
        loop.set_exception_handler(None)
    assert len(first.content) == len(second.content) == 1000
    assert len(reported) == 2 and isinstance(reported[0]["exception"], RuntimeError)


async def test_graceful_shutdown(origin_port: int, start: StartProxy) -> None:
    """Idle keep-alive connections close at once, a short response finishes, a long stream is cut at
    the deadline with a record saying so; new connections are refused."""
    proxy = await start(origin_port)
    loop = asyncio.get_running_loop()
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    idle_writer.write(b"GET /bytes?n=3 HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(idle_reader.readuntil(b"\r\n\r\n"), 5)
    await asyncio.wait_for(idle_reader.readexactly(3), 5)

    stream_reader, stream_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    stream_writer.write(b"GET /tokens?n=10000&delay=0.01 HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(stream_reader.readuntil(b"data: "), 5)

    short_reader, short_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    short_writer.write(b"GET /tokens?n=20&delay=0.01 HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(short_reader.readuntil(b"data: "), 5)

    began = loop.time()
    shutdown = asyncio.ensure_future(shutdown_proxy(proxy.server, grace=0.6))
    assert await asyncio.wait_for(idle_reader.read(-1), 0.5) == b""  # idle: closed at once
    short_rest = await asyncio.wait_for(short_reader.read(-1), 3)
    assert short_rest.endswith(b"0\r\n\r\n") and short_rest.count(b"data: ") == 19  # finished
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        cut = await asyncio.wait_for(stream_reader.read(-1), 3)
    except ConnectionResetError:
        cut = b""
    assert not cut.endswith(b"0\r\n\r\n")
    await asyncio.wait_for(shutdown, 5)
    assert 0.5 < loop.time() - began < 3
    ends = sorted(record.end for record in proxy.records)
    assert ends == ["complete", "complete", "shutdown"]
    assert proxy.proxy.pool.open == 0
    for writer in (idle_writer, stream_writer, short_writer):
        writer.close()


@pytest.mark.both_loops
async def test_shutdown_completes_when_a_client_left_while_it_was_not_being_read(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """While a pipelined request waits, the proxy does not read the client, so it cannot see the client go.
    The shutdown's 503 then meets a reset socket; the shutdown must still complete."""
    port, origins = await recording_origin(lambda origin, data: None)  # never answers
    proxy = await start(port)
    _reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
    await wait_for(lambda: len(origins) == 1 and origins[0].data.count(b"\r\n\r\n") == 1, what="the first request")
    connection = await proxy.only_connection()
    await wait_for(lambda: bool(connection._queue), what="the second request queued")
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.05)
    assert connection in proxy.proxy.connections  # not read, so not known to be gone
    await asyncio.wait_for(shutdown_proxy(proxy.server, grace=0.1), 5)
    assert [record.end for record in proxy.records] == ["shutdown"]
    assert proxy.proxy.connections == set() and proxy.proxy.pool.open == 0
