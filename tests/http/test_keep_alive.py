"""Keep-alive on both sides, pipelining, HTTP/1.0 clients, HEAD, interim responses, stale pooled connections."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fastpipe._origin import payload

from ._proxy_support import (
    MakeRecordingOrigin,
    ProxyUnderTest,
    RecordingOrigin,
    StartProxy,
    parse_responses,
    raw_exchange,
    wait_for,
)


@pytest.mark.both_loops
async def test_one_upstream_connection_serves_many_requests(proxied: ProxyUnderTest) -> None:
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        for index in range(20):
            response = await client.get(f"/bytes?n={index * 100}")
            assert response.status_code == 200 and len(response.content) == index * 100
    pool = proxied.proxy.pool
    assert pool.open == 1 and pool.idle == 1


@pytest.mark.both_loops
async def test_pipelined_requests_are_answered_in_order(proxied: ProxyUnderTest) -> None:
    requests = b"".join(
        b"GET /bytes?n=%d&seed=%d HTTP/1.1\r\nHost: t\r\n\r\n" % (size, size) for size in (300, 5, 70_000, 0, 12)
    )
    last = b"GET /bytes?n=7 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    data = await raw_exchange(proxied.port, requests + last)
    responses = parse_responses(data)
    assert [len(response.body) for response in responses] == [300, 5, 70_000, 0, 12, 7]
    for response, size in zip(responses, (300, 5, 70_000, 0, 12), strict=False):
        assert response.complete and response.body == b"".join(payload(size, size))


async def test_nothing_after_connection_close_is_answered(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    data = await raw_exchange(
        proxy.port,
        b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    assert len(parse_responses(data)) == 1
    assert b"GET /b" not in b"".join(origin.data for origin in origins)


@pytest.mark.both_loops
async def test_http10_client_gets_a_close_delimited_body_from_a_chunked_upstream(proxied: ProxyUnderTest) -> None:
    data = await raw_exchange(proxied.port, b"GET /tokens?n=3 HTTP/1.0\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert body.count(b"data: ") == 3


async def test_http10_keep_alive_with_content_length(proxied: ProxyUnderTest) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    try:
        for size in (10, 20):
            writer.write(b"GET /bytes?n=%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % size)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"Content-Length: %d" % size in head
            assert b"connection: keep-alive" in head.lower()
            assert len(await asyncio.wait_for(reader.readexactly(size), 5)) == size
    finally:
        writer.close()
        await writer.wait_closed()


async def test_head_request_has_no_body_and_keeps_the_connection(proxied: ProxyUnderTest) -> None:
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        response = await client.head("/bytes?n=5000")
        assert response.status_code == 200
        assert response.headers["content-length"] == "5000" and response.content == b""
        response = await client.get("/bytes?n=10")
        assert len(response.content) == 10
    assert proxied.proxy.pool.open == 1


async def test_bodyless_statuses_pass(proxied: ProxyUnderTest) -> None:
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        for code in (204, 304, 404, 500):
            response = await client.get(f"/status/{code}")
            assert response.status_code == code and response.content == b""


async def test_close_delimited_upstream_is_rechunked_for_http11(proxied: ProxyUnderTest) -> None:
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        response = await client.get("/close?n=100000")
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == b"".join(payload(100_000))


async def test_expect_100_continue_is_relayed(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        received = origin.data
        if received.endswith(b"\r\n\r\n") and b"Expect: 100-continue" in received:
            origin.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        elif received.endswith(b"hello"):
            origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"done"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_stale_pooled_connection_is_retried_for_a_bodyless_request(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """The upstream closes an idle keep-alive connection; the next GET must not fail because of it."""
    port, origins = await recording_origin()
    proxy = await start(port)
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        assert (await client.get("/one")).status_code == 200
        # Close the pooled connection from the origin side, without the proxy noticing first.
        origins[0].transport.close()
        await wait_for(lambda: origins[0].closed.done(), what="origin side close")
        response = await client.get("/two")
    assert response.status_code == 200
    assert len(origins) == 2


async def test_pool_size_zero_keeps_no_idle_connection(origin_port: int, start: StartProxy) -> None:
    proxy = await start(origin_port, pool_size=0)
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        for _ in range(3):
            assert (await client.get("/bytes?n=3")).status_code == 200
    await wait_for(lambda: proxy.proxy.pool.open == 0, what="upstream connections closed")
    assert proxy.proxy.pool.idle == 0


async def test_upstream_sending_chunked_to_an_http10_request_is_a_502(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")

    port, origins = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET /x HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 502")
    assert origins[0].data.startswith(b"GET /x HTTP/1.0\r\n")


@pytest.mark.both_loops
async def test_client_half_close_still_gets_its_responses(proxied: ProxyUnderTest) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    try:
        writer.write(b"GET /bytes?n=100 HTTP/1.1\r\nHost: t\r\n\r\n")
        writer.write(b"GET /tokens?n=3&delay=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    responses = parse_responses(data)
    assert len(responses[0].body) == 100
    assert len(responses) == 2 and responses[1].complete and responses[1].body.count(b"data: ") == 3


@pytest.mark.both_loops
async def test_abort_on_client_eof_frees_the_upstream_of_a_silent_stream(origin_port: int, start: StartProxy) -> None:
    """A client that closes between two SSE events: by default found out only at the next event (30 s
    away here); with abort_on_client_eof the exchange ends and the upstream connection closes at once."""
    proxy = await start(origin_port, abort_on_client_eof=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /tokens?n=3&delay=30 HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"data: "), 5)
    assert proxy.proxy.pool.open == 1
    loop = asyncio.get_running_loop()
    left_at = loop.time()
    writer.close()
    await writer.wait_closed()
    [record] = await proxy.wait_records(1, timeout=5)
    assert record.end == "client gone"
    await wait_for(lambda: proxy.proxy.pool.open == 0, what="the upstream connection closed")
    assert loop.time() - left_at < 1.0


@pytest.mark.both_loops
async def test_abort_on_client_eof_cuts_a_half_closed_client_visibly(origin_port: int, start: StartProxy) -> None:
    proxy = await start(origin_port, abort_on_client_eof=True)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET /tokens?n=3&delay=0.2 HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"data: "), 5)
        writer.write_eof()
        try:
            rest = await asyncio.wait_for(reader.read(-1), 5)
        except ConnectionResetError:
            rest = b""
    finally:
        writer.close()
    assert not (head + rest).endswith(b"0\r\n\r\n")  # never a clean end
    [record] = await proxy.wait_records(1)
    assert record.end == "client gone"


async def test_upstream_answering_before_the_upload_ends(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    """The upstream refuses an upload after its head (as servers do with 413): the client gets that answer,
    the rest of its body goes nowhere, and both connections close."""

    def refuse(origin: RecordingOrigin, data: bytes) -> None:
        if len(origin.received) == 1:
            origin.transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
            )
            origin.transport.close()

    port, _ = await recording_origin(refuse)
    proxy = await start(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        received = asyncio.ensure_future(reader.read(-1))
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
        for _ in range(20):  # the client keeps sending a little: nothing may break on the proxy's side
            if writer.transport.is_closing():
                break
            writer.write(b"b" * 10000)
            await asyncio.sleep(0.005)
        data = await asyncio.wait_for(received, 5)
    finally:
        writer.close()
    [response] = parse_responses(data)
    assert response.status == 413 and response.body == b"nope" and response.complete
    [record] = await proxy.wait_records(1)
    assert (record.upstream_status, record.end) == (413, "complete")
