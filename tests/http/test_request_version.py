"""The request's HTTP version, which the proxy reads from the request line's bytes when the request began a
read (instead of asking the parser for a formatted string), agrees with httptools in every layout: the
version a request was sent in decides the version it goes upstream in (an HTTP/1.0 request goes as 1.0)."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest
from httptools import HttpParserError, HttpRequestParser

from ._proxy_support import MakeRecordingOrigin, StartProxy, parse_responses

# Each layout: the writes a client makes, a short pause between them (so that each is most likely its own
# read); every layout ends with a request that closes the connection.
LAYOUTS = {
    "1.1 in one read": [b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"],
    "1.0 in one read": [b"GET /a HTTP/1.0\r\nHost: t\r\n\r\n"],
    "1.0, absolute form": [b"GET http://t/a?q=1 HTTP/1.0\r\n\r\n"],
    "1.0 after an empty line": [b"\r\nGET /a HTTP/1.0\r\nHost: t\r\n\r\n"],
    "1.0 split inside its version": [b"GET /a HTTP/1.", b"0\r\nHost: t\r\n\r\n"],
    "1.0 split inside its target": [b"GET /a", b"bc HTTP/1.0\r\nHost: t\r\n\r\n"],
    "1.0 split after its request line": [b"GET /a HTTP/1.0\r\n", b"Host: t\r\n\r\n"],
    "1.1 then 1.0 in one read": [b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.0\r\nHost: t\r\n\r\n"],
    "1.0 keep-alive then 1.1 in one read": [
        b"GET /a HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ],
    "1.1, then 1.0 beginning the next read": [
        b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /b HTTP/1.0\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    ],
    "1.1 whose target reads like a version": [b"GET /HTTP/1.0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"],
    "1.0 after two spaces": [b"GET  /a HTTP/1.0\r\nHost: t\r\n\r\n"],
    "1.0, a long target": [b"GET /" + b"a" * 3000 + b" HTTP/1.0\r\nHost: t\r\n\r\n"],
}


def versions_httptools_reads(data: bytes) -> list[str] | None:
    """The version of each request in ``data`` as httptools reports it; None if it refuses the bytes."""
    versions: list[str] = []

    class Callbacks:
        def on_headers_complete(self) -> None:
            versions.append(parser.get_http_version())

    parser = HttpRequestParser(Callbacks())
    try:
        parser.feed_data(data)
    except HttpParserError:
        return None
    return versions


async def send_in_pieces(port: int, pieces: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for index, piece in enumerate(pieces):
            if index:
                await asyncio.sleep(0.05)
            writer.write(piece)
            await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 5)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_the_version_each_request_goes_upstream_in_is_the_one_httptools_reads(
    start: StartProxy, recording_origin: MakeRecordingOrigin, layout: str
) -> None:
    pieces = LAYOUTS[layout]
    expected = versions_httptools_reads(b"".join(pieces))
    assert expected, f"{layout}: httptools refuses it, so it proves nothing here"
    port, origins = await recording_origin()
    proxy = await start(port)
    answer = await send_in_pieces(proxy.port, pieces)
    responses = parse_responses(answer)
    assert [response.status for response in responses] == [200] * len(expected)
    upstream = b"".join(origin.data for origin in origins)
    sent = [version.decode() for version in re.findall(rb"(?m)^[A-Z]+ \S+ HTTP/(1\.[01])\r$", upstream)]
    assert sorted(sent) == sorted(expected), layout
