"""Without sockets (fake transports): the upstream's own bytes objects reach the client's transport.

Where framing is passed on unchanged the proxy forwards the very objects the upstream socket delivered,
sliced only at message boundaries; the copying mode (``zero_copy=False``) forwards the parser's copies.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastpipe.http import Limits, Proxy
from fastpipe.http.upstream import UpstreamConnection


class FakeTransport:
    """Records writes; enough of asyncio's transport API for the proxy's protocols."""

    def __init__(self) -> None:
        self.writes: list[Any] = []
        self.reading = True
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(data)

    def writelines(self, items: Any) -> None:
        self.writes.extend(items)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    @property
    def data(self) -> bytes:
        return b"".join(bytes(item) for item in self.writes)


def _wire(zero_copy: bool) -> tuple[Any, FakeTransport, UpstreamConnection, FakeTransport]:
    proxy = Proxy("http://127.0.0.1:9", limits=Limits(zero_copy=zero_copy))
    upstream_transport = FakeTransport()
    upstream = proxy.pool._factory(proxy.pool)
    upstream.connection_made(upstream_transport)  # type: ignore[arg-type]
    proxy.pool.release(upstream)
    client_transport = FakeTransport()
    client = proxy()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    return client, client_transport, upstream, upstream_transport


@pytest.mark.both_loops
@pytest.mark.parametrize("zero_copy", [True, False], ids=["zero-copy", "copy"])
async def test_content_length_body_objects_pass_through(zero_copy: bool) -> None:
    client, client_transport, upstream, upstream_transport = _wire(zero_copy)
    client.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    assert upstream_transport.data.startswith(b"GET /x HTTP/1.1\r\n")
    pieces = [b"a" * 1000, b"b" * 5000, b"c" * 4000]
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n")
    for piece in pieces:
        upstream.data_received(piece)
    body = client_transport.data.split(b"\r\n\r\n", 1)[1]
    assert body == b"".join(pieces)
    passed_on = [any(write is piece for write in client_transport.writes) for piece in pieces]
    assert passed_on == ([True] * 3 if zero_copy else [False] * 3)
    assert proxy_pool_has(upstream)  # complete, keep-alive: back in the pool


def proxy_pool_has(upstream: UpstreamConnection) -> bool:
    return upstream in upstream._pool._idle


@pytest.mark.parametrize("zero_copy", [True, False], ids=["zero-copy", "copy"])
async def test_chunked_body_objects_pass_through_as_chunked(zero_copy: bool) -> None:
    client, client_transport, upstream, _ = _wire(zero_copy)
    client.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    pieces = [b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]
    upstream.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for piece in pieces:
        upstream.data_received(piece)
    head, body = client_transport.data.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"".join(pieces)
    passed_on = [any(write is piece for write in client_transport.writes) for piece in pieces]
    assert all(passed_on) if zero_copy else not any(passed_on)
    assert proxy_pool_has(upstream)


async def test_only_the_message_is_forwarded_from_a_piece_with_extra_bytes() -> None:
    client, client_transport, upstream, upstream_transport = _wire(True)
    client.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
    upstream.data_received(b"defGARBAGE")
    assert client_transport.data.endswith(b"\r\n\r\nabcdef")
    assert upstream_transport.closed and not proxy_pool_has(upstream)


async def test_head_and_first_body_bytes_leave_in_one_write_call() -> None:
    """A small response (head and body in one upstream read) costs one writelines on the client side."""
    client, client_transport, upstream, _ = _wire(True)
    client.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert len(client_transport.writes) == 2  # (head, body) handed over together by writelines
    assert client_transport.writes[1] == b"hello"


async def test_client_gone_cancels_the_pipe_and_closes_the_upstream() -> None:
    client, _, upstream, upstream_transport = _wire(True)
    client.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    pipe = client._pipe
    assert pipe is not None and pipe.owner is not None
    client.connection_lost(None)
    assert pipe.state == "cancelled" and pipe.owner is None
    assert upstream_transport.closed and not proxy_pool_has(upstream)


async def test_client_backpressure_pauses_the_upstream_reader() -> None:
    client, _, upstream, upstream_transport = _wire(True)
    client.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    client.pause_writing()
    assert not upstream_transport.reading
    client.resume_writing()
    assert upstream_transport.reading
    client.connection_lost(None)  # ends the exchange: the Pipe must not be dropped unfinished
