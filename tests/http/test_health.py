"""The health endpoint: answered by the proxy itself, never upstream, failing once a drain began."""

from __future__ import annotations

import asyncio

import pytest

from fastpipe.http import start_proxy

from ._proxy_support import MakeRecordingOrigin, StartProxy, parse_responses, raw_exchange


@pytest.mark.both_loops
async def test_health_is_answered_by_the_proxy_and_never_goes_upstream(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port, health_path="/healthz")
    data = await raw_exchange(
        proxy.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz/deeper HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    first, second = parse_responses(data)
    assert (first.status, first.body) == (200, b"ok\n")
    assert first.header(b"connection") is None  # the connection goes on
    assert (second.status, second.body) == (200, b"ok")  # another path: the origin's answer
    head = await raw_exchange(proxy.port, b"HEAD /healthz?probe=1 HTTP/1.0\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\nConnection: close\r\n\r\n")
    assert b"Content-Length: 3\r\n" in head
    sent = b"".join(origin.data for origin in origins)
    assert sent.count(b"\r\n\r\n") == 1 and sent.startswith(b"GET /healthz/deeper HTTP/1.1\r\n")
    records = await proxy.wait_records(3)
    assert sorted((r.target, r.status, r.upstream_status) for r in records) == [
        ("/healthz", 200, None),
        ("/healthz/deeper", 200, 200),
        ("/healthz?probe=1", 200, None),
    ]


async def test_other_methods_on_the_health_path_are_proxied(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port, health_path="/healthz")
    data = await raw_exchange(
        proxy.port, b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    [response] = parse_responses(data)
    assert (response.status, response.body) == (200, b"ok")
    assert origins[0].data.startswith(b"POST /healthz HTTP/1.1\r\n") and origins[0].data.endswith(b"\r\n\r\nhi")


@pytest.mark.both_loops
async def test_health_fails_with_503_and_closes_while_draining(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, _ = await recording_origin()
    proxy = await start(port, health_path="/healthz")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        # A keep-alive connection busy with a request whose answer never comes holds the drain open.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"ok\n")).startswith(b"HTTP/1.1 200 OK\r\n")
        proxy.proxy.draining = True  # what shutdown_proxy sets first
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
    [response] = parse_responses(answer)
    assert (response.status, response.body) == (503, b"draining\n")
    assert response.header(b"connection") == b"close"


@pytest.mark.parametrize("bad", ["healthz", "/h?x=1", "/a b", 7])
async def test_a_health_path_that_is_not_an_absolute_path_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="health_path"):
        await start_proxy("http://127.0.0.1:9", port=0, health_path=bad)  # type: ignore[arg-type]
