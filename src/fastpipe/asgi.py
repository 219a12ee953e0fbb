"""ASGI: serve a Pipe as the response body under any ASGI server, or as a Starlette/FastAPI response.

``PipeResponse(pipe, status, headers)`` sends the pipe's chunks as ``http.response.body`` messages, as they
come (the chunk objects themselves: a server that writes them to its transport copies nothing more). It
listens for ``http.disconnect`` the whole time, so a client that leaves while the upstream is idle is
noticed at once, and then applies the pipe's ``on_disconnect`` policy (default: cancel the pipe, releasing
its owner; ``drain``: read on within bounds, for taps and usage capture).

An upstream error after the response started is raised to the server, which aborts the connection: the
client sees a broken response, never a short one that ends cleanly.

**Middleware can undo that.** ASGI has no "abort" message: a response is broken only by the exception
reaching the server. Starlette's ``BaseHTTPMiddleware`` (what ``@app.middleware("http")`` makes) catches
the exception, ends the body cleanly (a chunked terminator after a 200) and re-raises only afterwards, so
a provider dying mid-stream reaches the client as a complete response; ``pipe.end_reason`` still says
``upstream-error``. Write middleware on such routes as a pure ASGI app (``async def __call__(self, scope,
receive, send)`` that awaits the wrapped app and lets its exceptions through), which keeps failures visible.

When Starlette is installed the class is a ``starlette.responses.Response``, so FastAPI returns it as is;
without Starlette it is a plain ASGI application.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Mapping, MutableMapping, Union

from ._backend import Pipe
from ._delivery import deliver, sink_policy
from .disconnect import DisconnectPolicy

try:
    from starlette.responses import Response as _ResponseBase
except ImportError:  # pragma: no cover - starlette is optional
    _ResponseBase = object  # type: ignore[assignment,misc]

__all__ = ("PipeResponse",)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Union[Mapping[str, str], Iterable[tuple[Union[str, bytes], Union[str, bytes]]], None]


class PipeResponse(_ResponseBase):
    """An ASGI response whose body is a Pipe (``None`` for no body)."""

    def __init__(
        self,
        pipe: Pipe | None,
        status: int = 200,
        headers: Headers = None,
        *,
        media_type: str | None = None,
        on_disconnect: DisconnectPolicy | None = None,
        background: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        # Starlette's Response.__init__ renders a body; a pipe has none to render, so it is not called.
        if type(status) is not int or not 100 <= status <= 999:
            raise ValueError(f"status must be an int from 100 to 999, got {status!r}")
        # Deprecated: the policy belongs to the pipe (None here: honour pipe.on_disconnect).
        self.on_disconnect = sink_policy("PipeResponse", on_disconnect)
        self.pipe = pipe
        self.status_code = status
        self.background = background  # type: ignore[assignment]
        self.raw_headers = encode_headers(headers, media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pipe = self.pipe
        delivering = False
        try:
            if scope["type"] != "http":
                raise RuntimeError(f"PipeResponse answers HTTP requests, not {scope['type']!r}")
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            if pipe is None or scope.get("method") == "HEAD":
                complete = True
            else:
                delivering = True  # from here on deliver() finishes the pipe, also in a drain that outlives us
                write = _BodyWriter(send)
                complete = await deliver(pipe, write, _disconnected(receive), self.on_disconnect)
        finally:
            if pipe is not None and not delivering:
                await pipe.aclose()  # HEAD, or the start failed: nobody will read it
        if complete:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()


class _BodyWriter:
    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    def __call__(self, chunk: Any) -> Awaitable[None]:
        return self._send({"type": "http.response.body", "body": chunk, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    """Return when the server says the client is gone (request body messages are not ours: skipped)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def encode_headers(headers: Headers, media_type: str | None = None) -> list[tuple[bytes, bytes]]:
    """ASGI raw headers (lower-case latin-1 names); a name or value with CR, LF or NUL is refused."""
    if headers is None:
        items: Iterable[tuple[Union[str, bytes], Union[str, bytes]]] = ()
    elif isinstance(headers, Mapping):
        items = headers.items()
    else:
        items = headers
    raw: list[tuple[bytes, bytes]] = []
    for name, value in items:
        raw_name = _encode(name, "name").lower()
        if not raw_name:
            raise ValueError("empty header name")
        raw.append((raw_name, _encode(value, "value")))
    if media_type is not None and all(name != b"content-type" for name, _ in raw):
        raw.append((b"content-type", _encode(media_type, "value")))
    return raw


def _encode(text: Union[str, bytes], what: str) -> bytes:
    if isinstance(text, str):
        data = text.encode("latin-1")
    elif isinstance(text, (bytes, bytearray)):
        data = bytes(text)
    else:
        raise TypeError(f"header {what} must be str or bytes, got {type(text).__name__}")
    if b"\r" in data or b"\n" in data or b"\0" in data:
        raise ValueError(f"header {what} {data!r} contains CR, LF or NUL")
    return data
