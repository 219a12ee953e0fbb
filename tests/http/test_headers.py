"""Hop-by-hop headers stay on their hop (both directions); X-Forwarded-* are set; Host is kept or rewritten."""

from __future__ import annotations

import pytest

from ._proxy_support import MakeRecordingOrigin, RecordingOrigin, StartProxy, parse_responses, raw_exchange


def _request_head(origin: RecordingOrigin) -> list[bytes]:
    head = origin.data.split(b"\r\n\r\n", 1)[0]
    return head.split(b"\r\n")


def _names(lines: list[bytes]) -> list[bytes]:
    return [line.split(b":", 1)[0].lower() for line in lines[1:]]


@pytest.mark.both_loops
async def test_request_hop_by_hop_headers_are_not_forwarded(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    await raw_exchange(
        proxy.port,
        b"GET /p?q=1 HTTP/1.1\r\nHost: example.test\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\n"
        b"X-Kept: yes\r\nAccept: */*\r\n\r\n",
    )
    lines = _request_head(origins[0])
    assert lines[0] == b"GET /p?q=1 HTTP/1.1"
    names = _names(lines)
    for hop in (b"connection", b"x-secret", b"keep-alive", b"proxy-connection", b"te", b"trailer"):
        assert hop not in names
    assert b"X-Kept: yes" in lines and b"Accept: */*" in lines
    assert b"Host: example.test" in lines


async def test_response_hop_by_hop_headers_are_not_forwarded(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(
            b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\n"
            b"Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTrailer: X-Sum\r\nX-Public: yes\r\n"
            b"Content-Length: 3\r\n\r\nabc"
        )

    port, _ = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    [response] = parse_responses(data)
    names = [name.lower() for name, _ in response.headers]
    for hop in (b"x-internal", b"keep-alive", b"proxy-connection", b"upgrade", b"trailer"):
        assert hop not in names
    assert response.header(b"X-Public") == b"yes"
    assert response.header(b"Connection") == b"close"  # the proxy's own, for this hop
    assert response.body == b"abc"


async def test_x_forwarded_headers(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    await raw_exchange(
        proxy.port,
        b"GET / HTTP/1.1\r\nHost: front.test:8443\r\nX-Forwarded-For: 203.0.113.7\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: spoofed\r\nConnection: close\r\n\r\n",
    )
    lines = _request_head(origins[0])
    assert b"X-Forwarded-For: 203.0.113.7, 127.0.0.1" in lines
    assert b"X-Forwarded-Proto: http" in lines
    assert b"X-Forwarded-Host: front.test:8443" in lines
    assert b"spoofed" not in origins[0].data and b"https" not in origins[0].data
    assert _names(lines).count(b"x-forwarded-for") == 1


@pytest.mark.parametrize("spell", [bytes.upper, bytes.lower, lambda name: name.swapcase()])
async def test_names_in_any_case_are_classified_alike(
    start: StartProxy, recording_origin: MakeRecordingOrigin, spell: object
) -> None:
    """The usual spellings take a shortcut past lower-casing; every other spelling must end the same."""
    respell = spell  # bytes -> bytes

    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(
            b"HTTP/1.1 200 OK\r\n"
            + respell(b"Connection")
            + b": X-Internal\r\nX-Internal: s\r\n"
            + respell(b"Transfer-Encoding")
            + b": chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )

    port, origins = await recording_origin(reply)
    proxy = await start(port)
    data = await raw_exchange(
        proxy.port,
        b"POST / HTTP/1.1\r\n"
        + respell(b"Host")
        + b": front.test\r\n"
        + respell(b"X-Forwarded-For")
        + b": 203.0.113.7\r\n"
        + respell(b"X-Forwarded-Proto")
        + b": https\r\n"
        + respell(b"Connection")
        + b": close, X-Secret\r\nX-Secret: 1\r\n"
        + respell(b"Keep-Alive")
        + b": 5\r\n"
        + respell(b"Content-Length")
        + b": 2\r\n"
        + respell(b"User-Agent")
        + b": t\r\n\r\nhi",
    )
    lines = _request_head(origins[0])
    names = _names(lines)
    for hop in (b"connection", b"x-secret", b"keep-alive", b"x-forwarded-proto"):
        assert names.count(hop) == (hop == b"x-forwarded-proto"), hop  # the proxy sets its own Proto only
    assert b"X-Forwarded-For: 203.0.113.7, 127.0.0.1" in lines
    assert b"X-Forwarded-Proto: http" in lines
    assert b"Host: front.test" in lines and names.count(b"host") == 1
    assert respell(b"Content-Length") + b": 2" in lines and origins[0].data.endswith(b"\r\n\r\nhi")
    assert respell(b"User-Agent") + b": t" in lines
    [response] = parse_responses(data)
    assert response.body == b"abc"
    assert b"x-internal" not in [name.lower() for name, _ in response.headers]


async def test_two_hosts_in_any_spelling_are_refused(start: StartProxy, recording_origin: MakeRecordingOrigin) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    data = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a.test\r\nHOST: b.test\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ")
    assert not origins


async def test_rewrite_host_sends_the_upstream_address(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port, rewrite_host=True)
    await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: front.test\r\nConnection: close\r\n\r\n")
    lines = _request_head(origins[0])
    assert b"Host: 127.0.0.1:%d" % port in lines
    assert b"X-Forwarded-Host: front.test" in lines
    assert _names(lines).count(b"host") == 1


async def test_http10_request_without_host_gets_the_upstream_host(
    start: StartProxy, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start(port)
    await raw_exchange(proxy.port, b"GET /old HTTP/1.0\r\n\r\n")
    lines = _request_head(origins[0])
    assert lines[0] == b"GET /old HTTP/1.0"
    assert b"Host: 127.0.0.1:%d" % port in lines
