"""Bad requests get a clear status and a closed connection; smuggled requests never reach the upstream."""

from __future__ import annotations

import asyncio

import pytest

from ._proxy_support import (
    MakeRecordingOrigin,
    ProxyUnderTest,
    RecordingOrigin,
    StartProxy,
    parse_responses,
    raw_exchange,
)


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


async def _refused(
    start: StartProxy, recording_origin: MakeRecordingOrigin, request: bytes, **limits: object
) -> tuple[int, bytes]:
    """Send ``request``; return the status and everything the upstream received."""
    port, origins = await recording_origin()
    proxy = await start(port, **limits)
    data = await raw_exchange(proxy.port, request)
    await asyncio.sleep(0.05)  # let anything the proxy might still send reach the origin
    return _status(data), b"".join(origin.data for origin in origins)


@pytest.mark.both_loops
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"this is not http\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: folded\r\n continued\r\n\r\n",
        b"GET / HTTP/1.1\nHost: t\n\n",  # bare LF
        b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # llhttp takes lengths up to 2**64 - 1; more than 2**63 - 1 was a fatal error in the compiled build
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 9223372036854775808\r\n\r\nab",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551615\r\n\r\nab",
    ],
    ids=["garbage", "no-colon", "no-host", "two-hosts", "obs-fold", "bare-lf", "te-in-http10", "cl-2e63", "cl-2e64-1"],
)
async def test_malformed_request_is_400(
    start: StartProxy, recording_origin: MakeRecordingOrigin, request_bytes: bytes
) -> None:
    status, upstream_saw = await _refused(start, recording_origin, request_bytes)
    assert status == 400
    assert upstream_saw == b""


@pytest.mark.both_loops
@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 40, 0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    ],
    ids=["cl-then-te", "te-then-cl", "two-cl", "cl-list", "te-space-before-colon"],
)
async def test_smuggling_attempts_are_400_and_never_reach_the_upstream(
    start: StartProxy, recording_origin: MakeRecordingOrigin, request_bytes: bytes
) -> None:
    status, upstream_saw = await _refused(start, recording_origin, request_bytes)
    assert status == 400
    assert b"smuggled" not in upstream_saw
    assert upstream_saw == b""


async def test_smuggling_after_a_good_request_answers_the_good_one_then_400(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    data = await raw_exchange(
        proxy.port,
        b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    responses = parse_responses(data)
    assert [response.status for response in responses] == [200, 400]
    upstream_saw = b"".join(origin.data for origin in origins)
    assert upstream_saw.startswith(b"GET /first ")
    assert b"smuggled" not in upstream_saw and b"POST" not in upstream_saw


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ],
    ids=["connect", "te-gzip"],
)
async def test_connect_and_unknown_codings_are_501(
    start: StartProxy, recording_origin: MakeRecordingOrigin, request_bytes: bytes
) -> None:
    status, upstream_saw = await _refused(start, recording_origin, request_bytes)
    assert status == 501
    assert upstream_saw == b""


async def test_header_over_the_limit_is_431(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    big = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    status, upstream_saw = await _refused(start, recording_origin, big)
    assert status == 431 and upstream_saw == b""


@pytest.mark.parametrize("piece", [4096, 200_000])
async def test_head_that_never_ends_is_cut_at_the_limit(proxied: ProxyUnderTest, piece: int) -> None:
    """A header value streamed on and on: the proxy answers 431 instead of buffering it, and the answer
    reaches a client that is still sending (lingering close, no reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port)
    try:
        response = asyncio.ensure_future(reader.read(-1))
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        for _ in range(400_000 // piece):  # far past the 64 KiB limit
            writer.write(b"b" * piece)
            await writer.drain()
            await asyncio.sleep(0.002)
        data = await asyncio.wait_for(response, 5)
        assert data.startswith(b"HTTP/1.1 431")
    finally:
        writer.close()


async def test_small_header_limit_counts_split_heads(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    port, _ = await recording_origin()
    proxy = await start(port, max_header_size=256)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
        for index in range(10):
            writer.write(b"X-H%d: %s\r\n" % (index, b"v" * 40))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"\r\n")
        data = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 431")


async def test_body_over_the_limit_by_content_length_is_413(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    request = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
    status, upstream_saw = await _refused(start, recording_origin, request, max_body_size=1000)
    assert status == 413 and upstream_saw == b""


async def test_chunked_body_over_the_limit_is_413_and_the_upstream_is_dropped(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def answer_gets_only(origin: RecordingOrigin, data: bytes) -> None:
        if data.startswith(b"GET"):
            origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    port, origins = await recording_origin(answer_gets_only)
    proxy = await start(port, max_body_size=1000)
    # Warm the pool, so the upload streams to an open upstream connection before it goes over the limit.
    assert _status(await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")) == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            writer.write(b"190\r\n" + b"y" * 400 + b"\r\n")
            await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 413")
    await asyncio.wait_for(origins[0].closed, 2)  # the upstream does not keep a half-sent body
    assert origins[0].data.count(b"y") <= 1000
    records = await proxy.wait_records(2)
    assert (records[1].end, records[1].status) == ("rejected", 413)


async def test_slow_client_is_cut_by_the_header_timeout(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port, header_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")  # and never the blank line
        data = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 408")
    assert 0.25 < loop.time() - began < 2.0
    assert origins == []


async def test_silent_connection_is_closed_by_the_header_timeout(proxied: ProxyUnderTest, start: StartProxy) -> None:
    proxy = await start(proxied.proxy.address.port, header_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        assert await asyncio.wait_for(reader.read(-1), 3) == b""
    finally:
        writer.close()


async def test_idle_keep_alive_connection_is_closed(origin_port: int, start: StartProxy) -> None:
    proxy = await start(origin_port, idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(b"GET /bytes?n=5 HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.readexactly(5), 5)
        assert await asyncio.wait_for(reader.read(-1), 3) == b""  # closed by the proxy, not by us
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /\r\nHost: t\r\n\r\n", 400),  # HTTP/0.9-style request line
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
        (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),  # the asterisk form is only for OPTIONS
        (b"GET ftp://a.test/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"GET http://user@a.test/x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ],
    ids=["http09", "http2-line", "asterisk-get", "ftp-target", "userinfo"],
)
async def test_unsupported_versions_and_targets_are_refused(
    start: StartProxy, recording_origin: MakeRecordingOrigin, request_bytes: bytes, status: int
) -> None:
    got, upstream_saw = await _refused(start, recording_origin, request_bytes)
    assert got == status and upstream_saw == b""


async def test_absolute_form_goes_upstream_in_origin_form(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    data = await raw_exchange(
        proxy.port,
        b"GET http://front.test:8081/p/q?x=1 HTTP/1.1\r\nHost: ignored.test\r\nConnection: close\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 200")
    lines = origins[0].data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert lines[0] == b"GET /p/q?x=1 HTTP/1.1"
    assert b"Host: front.test:8081" in lines and b"ignored.test" not in origins[0].data
    assert b"X-Forwarded-Host: front.test:8081" in lines


async def test_options_asterisk_is_forwarded(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert origins[0].data.startswith(b"OPTIONS * HTTP/1.1\r\n")


async def test_chunked_request_with_trailers_is_answered(proxied: ProxyUnderTest) -> None:
    data = await raw_exchange(
        proxied.port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Checksum: 42\r\n\r\n",
    )
    [response] = parse_responses(data)
    assert response.status == 200 and response.body == b"hello" and response.complete


async def test_request_body_that_stops_arriving_is_408(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def answer_when_whole(origin: RecordingOrigin, data: bytes) -> None:
        if origin.data.endswith(b"x" * 100):
            origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    port, origins = await recording_origin(answer_when_whole)
    proxy = await start(port, idle_timeout=0.4)
    loop = asyncio.get_running_loop()
    began = loop.time()
    data = await raw_exchange(proxy.port, b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
    assert data.startswith(b"HTTP/1.1 408")
    assert 0.35 < loop.time() - began < 2.5
    await asyncio.wait_for(origins[0].closed, 2)  # the upstream is not left waiting for the rest
    [record] = await proxy.wait_records(1)
    assert record.end == "timeout"
