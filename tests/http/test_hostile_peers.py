"""What hostile clients and origins cannot make the proxy do: replay, hold unbounded memory, relay bad heads."""

from __future__ import annotations

import asyncio
import re
import socket
import sys

import httpx
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


def _small_kernel_send_buffers(proxy: ProxyUnderTest) -> None:
    """Accepted sockets inherit the listener's SO_SNDBUF: keep the kernel from absorbing what the proxy
    writes, so what a client does not read stays in the proxy's own buffers, where the bounds apply."""
    proxy.server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


def _answer_heads(origin: RecordingOrigin, body: bytes) -> None:
    """Answer every request head not answered yet with ``body``."""
    heads = origin.data.count(b"\r\n\r\n")
    answered = getattr(origin, "answered", 0)
    for _ in range(heads - answered):
        origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    origin.answered = heads  # type: ignore[attr-defined]


@pytest.mark.both_loops
@pytest.mark.parametrize(
    ("method", "retried"), [(b"POST", False), (b"PATCH", False), (b"GET", True), (b"DELETE", True)]
)
async def test_only_idempotent_requests_are_sent_again_after_a_pooled_connection_fails(
    start: StartProxy, recording_origin: MakeRecordingOrigin, method: bytes, retried: bool
) -> None:
    """The pooled connection takes the request and closes without answering: it may have run it."""
    origins: list[RecordingOrigin] = []

    def reply(origin: RecordingOrigin, data: bytes) -> None:
        if origin is origins[0] and origin.data.count(b"\r\n\r\n") == 2:
            origin.transport.close()  # received the second request, answers nothing
        else:
            _answer_heads(origin, b"ok")

    port, origins = await recording_origin(reply)
    proxy = await start(port)
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        assert (await client.get("/warm")).status_code == 200
        response = await client.request(method.decode(), "/act")
    received = [line for origin in origins for line in origin.data.split(b"\r\n") if line.endswith(b"HTTP/1.1")]
    if retried:
        assert response.status_code == 200
        assert received.count(method + b" /act HTTP/1.1") == 2
    else:
        assert response.status_code == 502
        assert received.count(method + b" /act HTTP/1.1") == 1, "a non-idempotent request ran twice"


@pytest.mark.both_loops
async def test_a_client_that_pipelines_and_never_reads_holds_no_more_than_the_write_marks(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    big = b"x" * 65536
    port, origins = await recording_origin(lambda origin, data: _answer_heads(origin, big))
    high = 128 * 1024
    proxy = await start(port, write_high_water=high, write_low_water=high // 4, idle_timeout=1.5)
    _small_kernel_send_buffers(proxy)
    client = await small_window_client(proxy.port, 16 * 1024)
    try:
        client.send(b"GET /p HTTP/1.1\r\nHost: t\r\n\r\n" * 1000)  # 28 KB of requests, never read
        connection = await proxy.only_connection()
        await asyncio.sleep(0.5)
        transport = connection._transport
        assert transport.get_write_buffer_size() <= high + len(big) + 200
        # What the kernel's socket buffers took is not the proxy's memory; past that, nothing more starts.
        started = sum(origin.data.count(b"\r\n\r\n") for origin in origins)
        await asyncio.sleep(0.3)
        assert sum(origin.data.count(b"\r\n\r\n") for origin in origins) == started
        assert started < 10, f"{started} pipelined requests went upstream for a client that reads nothing"
        # The send deadline (idle_timeout) ends it with a reset, not a close that waits on the client.
        await wait_for(lambda: not proxy.proxy.connections, timeout=6.0, what="the stuck client connection to go")
        with pytest.raises(ConnectionResetError):
            for _ in range(1000):  # drain what was delivered, then the reset
                if not client.recv(1 << 20):
                    break
    finally:
        client.close()


async def test_a_client_that_never_reads_an_error_answer_is_reset_at_the_send_deadline(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    big = b"x" * 200_000
    port, _ = await recording_origin(lambda origin, data: _answer_heads(origin, big))
    proxy = await start(port, idle_timeout=1.0)
    _small_kernel_send_buffers(proxy)
    client = await small_window_client(proxy.port, 4096)
    try:
        # A response that stays in the proxy's buffer (under the high-water mark, so nothing pauses), then
        # a bad request queued behind it: the 400's lingering close waits on a client that reads nothing.
        client.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /bad HTTP/1.1\r\n\r\n")
        await proxy.only_connection()
        await wait_for(lambda: not proxy.proxy.connections, timeout=6.0, what="the stuck client connection to go")
    finally:
        client.close()


@pytest.mark.both_loops
async def test_endless_interim_responses_end_in_a_502_within_the_head_limit(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"

    def reply(origin: RecordingOrigin, data: bytes) -> None:
        if not getattr(origin, "streaming", False):
            origin.streaming = True  # type: ignore[attr-defined]
            origin.transport.write(early * 4000)  # 240 KB of 1xx heads, and never a final response

    port, _ = await recording_origin(reply)
    proxy = await start(port, max_header_size=16 * 1024)
    data = await raw_exchange(proxy.port, b"GET /hints HTTP/1.1\r\nHost: t\r\n\r\n", timeout=5.0)
    relayed = data.count(b"HTTP/1.1 103 ")
    assert 0 < relayed * len(early) <= 16 * 1024 + len(early)
    assert b"HTTP/1.1 502 " in data
    [record] = await proxy.wait_records(1)
    assert record.status == 502 and record.end == "upstream error"


async def test_interim_heads_lose_their_framing_headers(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(
            b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </a>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    interim, final = data.split(b"\r\n\r\n", 1)
    assert interim.startswith(b"HTTP/1.1 103 ") and b"Link: </a>" in interim
    assert b"content-length" not in interim.lower()
    assert final.startswith(b"HTTP/1.1 200 OK\r\n") and final.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize("status", [b"099", b"000", b"600", b"999"])
async def test_a_status_outside_100_to_599_is_a_502(
    start: StartProxy, recording_origin: MakeRecordingOrigin, status: bytes
) -> None:
    port, _ = await recording_origin(
        lambda origin, data: origin.transport.write(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 0\r\n\r\n")
    )
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", timeout=5.0)
    assert [response.status for response in parse_responses(data)] == [502]


@pytest.mark.both_loops
async def test_connection_naming_the_response_length_is_a_502(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        if b"/bad" in data:
            origin.transport.write(b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello")
        else:
            _answer_heads(origin, b"ok")

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    async with httpx.AsyncClient(base_url=proxy.url) as client:
        bad = await client.get("/bad")
        good = await client.get("/good")
    assert bad.status_code == 502 and b"content-length" in bad.content
    assert (good.status_code, good.content) == (200, b"ok")


async def test_an_ipv6_absolute_form_target_keeps_its_brackets_in_host(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    await raw_exchange(
        proxy.port, b"GET http://[::1]:8080/x?y=1 HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n"
    )
    head = origins[0].data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"GET /x?y=1 HTTP/1.1"
    assert b"Host: [::1]:8080" in head and b"X-Forwarded-Host: [::1]:8080" in head


async def test_max_header_count_is_a_limit_of_its_own(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    port, origins = await recording_origin()
    proxy = await start(port, max_header_count=5)
    ok = await raw_exchange(
        proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n" + b"A: 1\r\n" * 3 + b"Connection: close\r\n\r\n"
    )
    assert [r.status for r in parse_responses(ok)] == [200]
    over = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\n" + b"A: 1\r\n" * 5 + b"\r\n")
    assert [r.status for r in parse_responses(over)] == [431]
    assert sum(origin.data.count(b"GET /") for origin in origins) == 1


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
async def test_max_header_count_must_be_a_positive_integer(start: StartProxy, value: object) -> None:
    with pytest.raises(ValueError, match="max_header_count"):
        await start(9, max_header_count=value)


async def test_the_header_flags_reach_the_cli_proxy(recording_origin: MakeRecordingOrigin) -> None:
    port, origins = await recording_origin()
    process = await asyncio.create_subprocess_exec(
        *(
            sys.executable,
            "-m",
            "fastpipe",
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            f"http://127.0.0.1:{port}",
        ),
        *("--max-header-count", "3", "--underscores-in-headers"),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = await asyncio.wait_for(process.stderr.readline(), 20)
        match = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match is not None, line
        proxy_port = int(match.group(1))
        ok = await raw_exchange(proxy_port, b"GET /a HTTP/1.1\r\nHost: t\r\nX_Custom: 1\r\nConnection: close\r\n\r\n")
        over = await raw_exchange(proxy_port, b"GET /b HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 15)
    assert [r.status for r in parse_responses(ok)] == [200]
    assert [r.status for r in parse_responses(over)] == [431]
    assert b"\r\nX_Custom: 1\r\n" in origins[0].data
