"""Upstream bodies as Pipes: an aiohttp client response, an httpx streaming response, an asyncio StreamReader.

Each source makes the response the pipe's owner, so a gateway may drop every other reference to it while
the body streams, and each settles the connection on every terminal path.

The response is not always what must live. In the shape LiteLLM hit, the object whose finalizer closes
the stream is the per-request *handler* (or the client it made): collect it and the stream dies, however
well the response is kept. ``owner=`` names such objects (one, or a tuple of several): the pipe retains
them with the response until the body is over (``pipe.owner`` is then ``(response, *owners)``).

============================  ==========================================  ===========================
source                        clean end                                   error or cancel
============================  ==========================================  ===========================
``from_aiohttp(resp)``        ``resp.release()``: connection to the pool  ``resp.close()``: dropped
``from_httpx(resp)``          ``await resp.aclose()`` (pool release)      ``await resp.aclose()``
``from_stream_reader(r)``     your ``on_release`` (the owner is yours)    your ``on_release``
============================  ==========================================  ===========================

The libraries are imported lazily: fastpipe does not depend on aiohttp or httpx.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from ._backend import Pipe
from ._errors import report_callback_error
from .disconnect import CANCEL, DisconnectPolicy

if TYPE_CHECKING:
    import aiohttp
    import httpx

__all__ = ("from_aiohttp", "from_httpx", "from_stream_reader")

DEFAULT_CHUNK_SIZE = 64 * 1024

OnRelease = Callable[[Pipe], object]

# aclose() calls that a synchronous release had to schedule: kept alive until they finish.
_CLOSING: set[asyncio.Task[None]] = set()


def _check_chunk_size(chunk_size: int | None, *, optional: bool) -> None:
    if chunk_size is None and optional:
        return
    if type(chunk_size) is not int or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1{' or None' if optional else ''}, got {chunk_size!r}")


def _owners(resp: object, owner: object) -> object:
    """What the pipe retains: the response alone, or the response and every extra owner, in a tuple."""
    if owner is None:
        return resp
    if isinstance(owner, tuple):
        return (resp, *owner)
    return (resp, owner)


def _chain(pipe: Pipe, on_release: OnRelease | None) -> None:
    if on_release is not None:
        try:
            on_release(pipe)
        except Exception as exc:
            report_callback_error("fastpipe: on_release callback failed", exc, pipe)


# -- aiohttp ------------------------------------------------------------------------------------------------


def from_aiohttp(
    resp: aiohttp.ClientResponse,
    chunk_size: int | None = None,
    *,
    owner: object = None,
    on_release: OnRelease | None = None,
    on_disconnect: DisconnectPolicy = CANCEL,
    pipe_type: type[Pipe] = Pipe,
) -> Pipe:
    """A Pipe over the body of an aiohttp ``ClientResponse``, which is its owner.

    ``chunk_size=None`` passes on what the connection delivered (``readchunk()``: no copy, one HTTP
    chunk at most); an int bounds every chunk to that many bytes (``read(n)``). On a clean end the
    response is released (its connection goes back to the pool); on an error or a cancel it is closed,
    so a half-read connection is never reused. ``on_release(pipe)`` runs after that. ``owner``: more
    objects to keep alive with the response (the handler or session whose finalizer would close it).
    """
    _check_chunk_size(chunk_size, optional=True)
    body = _AiohttpBody(resp.content, chunk_size)
    release = _AiohttpRelease(resp, on_release)
    return pipe_type(body, _owners(resp, owner), on_release=release, on_disconnect=on_disconnect)


class _AiohttpBody:
    """``readchunk()`` or ``read(n)`` until the end; nothing to close here (the release does it)."""

    __slots__ = ("_chunk_size", "_content")

    def __init__(self, content: aiohttp.StreamReader, chunk_size: int | None) -> None:
        self._content = content
        self._chunk_size = chunk_size

    def __aiter__(self) -> _AiohttpBody:
        return self

    async def __anext__(self) -> bytes:
        if self._chunk_size is not None:
            chunk = await self._content.read(self._chunk_size)
            if chunk:
                return chunk
            raise StopAsyncIteration
        while True:
            chunk, end_of_http_chunk = await self._content.readchunk()
            if chunk:
                return chunk
            if not end_of_http_chunk:  # (b"", False) is the end; (b"", True) an empty chunk boundary
                raise StopAsyncIteration


class _AiohttpRelease:
    __slots__ = ("_resp", "_then")

    def __init__(self, resp: aiohttp.ClientResponse, then: OnRelease | None) -> None:
        self._resp: aiohttp.ClientResponse | None = resp
        self._then = then

    def __call__(self, pipe: Pipe) -> None:
        resp, self._resp = self._resp, None
        assert resp is not None
        if pipe.state == "closed":
            resp.release()
        else:
            resp.close()
        _chain(pipe, self._then)


# -- httpx --------------------------------------------------------------------------------------------------


def from_httpx(
    resp: httpx.Response,
    chunk_size: int | None = None,
    *,
    owner: object = None,
    on_release: OnRelease | None = None,
    on_disconnect: DisconnectPolicy = CANCEL,
    pipe_type: type[Pipe] = Pipe,
) -> Pipe:
    """A Pipe over the raw body of an httpx streaming response (``client.send(..., stream=True)``).

    The response is the owner; ``resp.aclose()`` is awaited on every terminal path — the end, an error,
    ``pipe.aclose()``, the consumer's task being cancelled — so its connection never stays checked out of
    the pool. Only ``pipe.cancel()`` (synchronous) cannot await: then the close is scheduled on the loop.
    ``chunk_size`` re-chunks like ``aiter_raw(chunk_size)``; None passes on what the transport delivered.
    ``owner``: more objects to keep alive with the response (the handler or client whose finalizer
    would close it).
    """
    _check_chunk_size(chunk_size, optional=True)
    if resp.is_stream_consumed or resp.is_closed:
        raise ValueError("from_httpx() needs a streaming response whose body was not read or closed")
    release = _HttpxRelease(resp, on_release)
    return pipe_type(
        _HttpxBody(resp, chunk_size), _owners(resp, owner), on_release=release, on_disconnect=on_disconnect
    )


class _HttpxBody:
    """``resp.aiter_raw()``, closing the response on the way out, whichever way that is."""

    __slots__ = ("_chunk_size", "_raw", "_resp")

    def __init__(self, resp: httpx.Response, chunk_size: int | None) -> None:
        self._resp = resp
        self._chunk_size = chunk_size
        self._raw: Any = None

    def __aiter__(self) -> _HttpxBody:
        self._raw = self._resp.aiter_raw(self._chunk_size)
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await self._raw.__anext__()
        except BaseException:  # the end, an error, or the consumer's task cancelled
            try:
                await self.aclose()
            except Exception as exc:  # the original reason to stop is what the consumer must see
                report_callback_error("fastpipe: closing the httpx response failed", exc, self._resp)
            raise
        return chunk

    async def aclose(self) -> None:
        """What Pipe.aclose() awaits: finish the raw iterator, then release the connection."""
        raw, self._raw = self._raw, None
        try:
            if raw is not None:
                await raw.aclose()
        finally:
            await self._resp.aclose()


class _HttpxRelease:
    __slots__ = ("_resp", "_then")

    def __init__(self, resp: httpx.Response, then: OnRelease | None) -> None:
        self._resp: httpx.Response | None = resp
        self._then = then

    def __call__(self, pipe: Pipe) -> None:
        resp, self._resp = self._resp, None
        assert resp is not None
        if not resp.is_closed:  # only after the synchronous pipe.cancel(): close it as soon as we can
            try:
                task = asyncio.get_running_loop().create_task(resp.aclose())
            except RuntimeError:
                pass  # no loop any more: nothing left to return the connection to
            else:
                _CLOSING.add(task)
                task.add_done_callback(_CLOSING.discard)
        _chain(pipe, self._then)


# -- asyncio streams ----------------------------------------------------------------------------------------


def from_stream_reader(
    reader: asyncio.StreamReader,
    owner: object = None,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    length: int | None = None,
    on_release: OnRelease | None = None,
    on_disconnect: DisconnectPolicy = CANCEL,
    pipe_type: type[Pipe] = Pipe,
) -> Pipe:
    """A Pipe over an ``asyncio.StreamReader``, read in chunks of at most ``chunk_size`` bytes (not lines).

    Without ``length`` the body runs to the reader's EOF. With ``length`` it is exactly that many bytes:
    the pipe ends after them (the rest of the stream stays unread) and an EOF before them is an error
    (``asyncio.IncompleteReadError``), never a short body that looks complete. ``owner`` (e.g. the
    StreamWriter, or a tuple of several objects) is retained until the end; close it in ``on_release``.
    """
    _check_chunk_size(chunk_size, optional=False)
    if length is not None and (type(length) is not int or length < 0):
        raise ValueError(f"length must be an int >= 0 or None, got {length!r}")
    body = _ReaderBody(reader, chunk_size, length)
    return pipe_type(body, owner, on_release=on_release, on_disconnect=on_disconnect)


class _ReaderBody:
    __slots__ = ("_chunk_size", "_left", "_length", "_reader")

    def __init__(self, reader: asyncio.StreamReader, chunk_size: int, length: int | None) -> None:
        self._reader = reader
        self._chunk_size = chunk_size
        self._length = length
        self._left = length

    def __aiter__(self) -> _ReaderBody:
        return self

    async def __anext__(self) -> bytes:
        left = self._left
        if left is None:
            chunk = await self._reader.read(self._chunk_size)
            if chunk:
                return chunk
            raise StopAsyncIteration
        if left == 0:
            raise StopAsyncIteration
        chunk = await self._reader.read(min(left, self._chunk_size))
        if not chunk:
            assert self._length is not None
            short = asyncio.IncompleteReadError(b"", left)
            short.args = (f"the stream ended {left} bytes before the {self._length} expected",)
            raise short
        self._left = left - len(chunk)
        return chunk
