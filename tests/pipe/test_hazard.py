"""The hazard the Pipe exists for: a body whose owner is collected mid-stream, and whose cleanup cuts it.

A gateway keeps only the upstream *body* and drops the upstream response. The response owns the connection
and closes it from a finalizer (``weakref.finalize`` or ``__del__``), as client libraries do. With the
response in a reference cycle, the next ``gc.collect()`` runs that finalizer while the client is still
reading: the body ends early and cleanly, a truncated body that looks complete.

Each scenario runs twice: through a Pipe that owns the response (the body must arrive byte-identical), and
through a naive ``async for c in src: yield c`` passthrough (the negative control: it must lose data,
which proves the scenario really cuts the body and the Pipe test can fail).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import weakref
from collections import deque
from types import ModuleType
from typing import Any, AsyncIterator, Callable

import pytest

BODY = os.urandom(256 * 1024)
PIECE = 16 * 1024


def _naive_passthrough(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async def passthrough() -> AsyncIterator[bytes]:
        async for chunk in body:
            yield chunk

    return passthrough()


async def _read_with_gc_between_pulls(
    stream: AsyncIterator[bytes], after_first_pull: Callable[[], None] | None = None
) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    pulls = 0
    async for chunk in stream:
        digest.update(chunk)
        size += len(chunk)
        pulls += 1
        gc.collect()
        if pulls == 1 and after_first_pull is not None:
            after_first_pull()
    return digest.hexdigest(), size


# -- in memory: the connection is a queue of pieces -------------------------------------------------------


class _Connection:
    """What a response owns: its pieces vanish when it is closed."""

    def __init__(self, body: bytes) -> None:
        self.pieces = deque(body[index : index + PIECE] for index in range(0, len(body), PIECE))
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.pieces.clear()


async def _read_body(connection: _Connection) -> AsyncIterator[bytes]:
    # Like a client's body iterator: it holds the connection, not the response.
    while connection.pieces:
        await asyncio.sleep(0)
        if connection.closed:
            return  # a closed connection reads as a clean end: the truncation looks complete
        yield connection.pieces.popleft()


class _ResponseWithFinalize:
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.myself = self  # a cycle, as real responses have: only the collector frees it
        weakref.finalize(self, connection.close)


class _ResponseWithDel:
    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        self.myself = self

    def __del__(self) -> None:
        self.connection.close()


RESPONSES: dict[str, Callable[[_Connection], object]] = {
    "weakref_finalize": _ResponseWithFinalize,
    "__del__": _ResponseWithDel,
}


def _gateway_with_pipe(impl: ModuleType, make_response: Callable[[_Connection], object]) -> Any:
    connection = _Connection(BODY)
    response = make_response(connection)
    return impl.Pipe(_read_body(connection), owner=response)  # the response goes out of scope here


def _gateway_with_naive_passthrough(make_response: Callable[[_Connection], object]) -> AsyncIterator[bytes]:
    connection = _Connection(BODY)
    make_response(connection)
    return _naive_passthrough(_read_body(connection))


@pytest.mark.parametrize("finalizer", sorted(RESPONSES))
async def test_body_owned_by_a_pipe_arrives_intact_despite_gc_between_pulls(impl: ModuleType, finalizer: str) -> None:
    pipe = _gateway_with_pipe(impl, RESPONSES[finalizer])
    digest, size = await _read_with_gc_between_pulls(pipe)
    assert size == len(BODY)
    assert digest == hashlib.sha256(BODY).hexdigest()
    assert pipe.state == "closed"
    assert pipe.owner is None


@pytest.mark.parametrize("finalizer", sorted(RESPONSES))
async def test_naive_passthrough_loses_the_body_under_the_same_gc(finalizer: str) -> None:
    # Negative control: without the owner held, the finalizer cuts the body after the first pull.
    stream = _gateway_with_naive_passthrough(RESPONSES[finalizer])
    digest, size = await _read_with_gc_between_pulls(stream)
    assert size < len(BODY)
    assert digest != hashlib.sha256(BODY).hexdigest()


# -- on a real loopback connection: the response's finalizer closes the client transport ---------------


class _ClientResponse:
    """An HTTP-client-like response: owns the transport and closes it when collected."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.myself = self
        weakref.finalize(self, writer.transport.close)


async def _read_socket_body(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await reader.read(64 * 1024):
        yield chunk


async def _serve_in_two_halves(
    second_half: asyncio.Event, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    # The second half is sent only once the client has pulled and collected garbage once, so a client
    # that lost its connection by then can never receive it.
    half = len(BODY) // 2
    try:
        writer.write(BODY[:half])
        await writer.drain()
        await asyncio.wait_for(second_half.wait(), 10)
        # A client that closed its end with data unread resets the connection. asyncio's transport then
        # drops further writes, uvloop's raises RuntimeError once its handle is closed: a connection
        # already lost gets nothing more, on either loop.
        if not writer.is_closing():
            writer.write(BODY[half:])
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def _fetch_over_loopback(wrap_body: Callable[[AsyncIterator[bytes], object], Any]) -> tuple[str, int]:
    second_half = asyncio.Event()
    handlers: list[asyncio.Task[None]] = []

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.ensure_future(_serve_in_two_halves(second_half, reader, writer)))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    reader, writer = await asyncio.open_connection(host, port)
    transport = writer.transport  # kept only to clean up; it does not keep the response alive
    try:
        stream = wrap_body(_read_socket_body(reader), _ClientResponse(writer))
        del reader, writer
        return await asyncio.wait_for(_read_with_gc_between_pulls(stream, second_half.set), 20)
    finally:
        second_half.set()
        gc.collect()  # run the response's finalizer now, while the loop can still close the transport
        transport.close()
        # The listener is closed whatever the handlers raise: a server left open at the end of a test
        # is an unclosed handle to uvloop's loop.close(). Every wait is bounded.
        server.close()
        try:
            await asyncio.wait_for(asyncio.gather(*handlers), 10)
        finally:
            await asyncio.wait_for(server.wait_closed(), 10)  # uvloop's waits for the connections too
            await asyncio.sleep(0)


async def test_socket_body_owned_by_a_pipe_arrives_intact_despite_gc_between_pulls(impl: ModuleType) -> None:
    pipes: list[Any] = []

    def wrap(body: AsyncIterator[bytes], response: object) -> Any:
        pipes.append(impl.Pipe(body, owner=response))
        return pipes[-1]

    digest, size = await _fetch_over_loopback(wrap)
    assert size == len(BODY)
    assert digest == hashlib.sha256(BODY).hexdigest()
    assert pipes[0].state == "closed"


async def test_naive_passthrough_of_a_socket_body_is_truncated_by_gc() -> None:
    digest, size = await _fetch_over_loopback(lambda body, response: _naive_passthrough(body))
    assert size < len(BODY)
    assert digest != hashlib.sha256(BODY).hexdigest()
