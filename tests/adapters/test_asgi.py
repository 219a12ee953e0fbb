"""PipeResponse under real ASGI servers (uvicorn with httptools and h11, hypercorn), Starlette and FastAPI.

The servers run in the test's loop on ephemeral ports; clients are httpx or a raw socket that leaves
mid-body. The owner of an idle upstream body must be released within a second of the client leaving.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import time
import weakref
from types import ModuleType
from typing import Any, AsyncIterator

import aiohttp
import httpx
import pytest
from fastapi import BackgroundTasks, FastAPI, Request

from fastpipe.asgi import PipeResponse
from fastpipe.disconnect import CANCEL
from fastpipe.sources import from_aiohttp
from fastpipe.sse import Event, EventTap
from fastpipe.tee import DisconnectPolicy

from ._support import (
    ASGI_SERVERS,
    Origin,
    Owner,
    Releases,
    asgi_server,
    chunks,
    get_then_leave,
    origin_server,
    pattern,
    settle,
    wait_until,
)

Scope = dict[str, Any]


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with origin_server() as server:
        yield server


class PipeApp:
    """An ASGI app answering every request with a PipeResponse made by ``make()``; it keeps the last one."""

    def __init__(self, make: Any) -> None:
        self.make = make
        self.responses: list[PipeResponse] = []
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # hypercorn always asks
            await lifespan(receive, send)
            return
        response = await self.make(scope)
        self.responses.append(response)
        try:
            await response(scope, receive, send)
        except BaseException as exc:
            self.errors.append(exc)
            raise


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_whole_body_arrives_and_the_owner_is_released(impl: ModuleType, server: str) -> None:
    releases = Releases()

    async def make(_scope: Scope) -> PipeResponse:
        pipe = impl.Pipe(chunks(20, 1000), Owner(), on_release=releases)
        return PipeResponse(pipe, headers={"content-type": "application/octet-stream", "x-origin": "test"})

    async with asgi_server(server, PipeApp(make)) as port, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.status_code == 200
    assert response.headers["x-origin"] == "test"
    assert response.content == pattern(20, 1000)
    assert releases.calls[0][0] == "closed"


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_client_leaving_mid_body_releases_an_idle_upstream_within_a_second(impl: ModuleType, server: str) -> None:
    releases = Releases()
    owners: list[weakref.ref[Owner]] = []

    async def make(_scope: Scope) -> PipeResponse:
        owner = Owner()
        owners.append(weakref.ref(owner))
        # Three chunks, then an upstream that sends nothing more: only the disconnect can end this.
        return PipeResponse(impl.Pipe(chunks(3, 1000, then="hang"), owner, on_release=releases))

    app = PipeApp(make)
    async with asgi_server(server, app) as port:
        await get_then_leave(port, "/", 3000)
        left_at = time.monotonic()
        state, released_at = await releases.wait(2.0)
        assert state == "cancelled"
        assert released_at - left_at < 1.0, f"owner released {released_at - left_at:.2f} s after the client left"
        gc.collect()
        assert owners[0]() is None
        assert app.responses[0].pipe is not None and app.responses[0].pipe.state == "cancelled"


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_client_leaving_closes_the_upstream_connection(impl: ModuleType, server: str, origin: Origin) -> None:
    async with aiohttp.ClientSession() as session:

        async def make(_scope: Scope) -> PipeResponse:
            upstream = await session.get(origin.url("/chunks?n=3&size=1000&then=hang"))
            return PipeResponse(from_aiohttp(upstream, pipe_type=impl.Pipe))

        async with asgi_server(server, PipeApp(make)) as port:
            await get_then_leave(port, "/", 3000)
            await wait_until(lambda: origin.exchanges[0].outcome == "client-gone", 1.0, "the upstream to be closed")


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_upstream_failure_is_a_broken_response_never_a_clean_end(impl: ModuleType, server: str) -> None:
    async def make(_scope: Scope) -> PipeResponse:
        return PipeResponse(impl.Pipe(chunks(5, 1000, then="fail")))

    app = PipeApp(make)
    async with asgi_server(server, app) as port, httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}/")
    assert app.responses[0].pipe is not None and app.responses[0].pipe.state == "errored"


@pytest.mark.parametrize("server", ["uvicorn-httptools", "hypercorn"])
@pytest.mark.parametrize("policy", ["drain", "cancel"])
async def test_drain_policy_keeps_the_usage_event_of_a_client_that_left(
    impl: ModuleType, origin: Origin, policy: str, server: str
) -> None:
    """The gateway's quota case: the client leaves after the first event; with ``drain`` the final usage
    event still reaches the tap, with ``cancel`` it does not (and the upstream is closed at once)."""
    usage: list[dict[str, int]] = []

    def on_event(event: Event) -> None:
        if event.data.startswith("{") and (payload := json.loads(event.data)).get("usage"):
            usage.append(payload["usage"])

    async with aiohttp.ClientSession() as session:

        async def make(_scope: Scope) -> PipeResponse:
            upstream = await session.get(origin.url("/sse?n=10&delay=0.02"))
            pipe = from_aiohttp(upstream, pipe_type=impl.Pipe).tap(EventTap(on_event))
            pipe.on_disconnect = (
                DisconnectPolicy.drain(max_bytes=1 << 20, timeout=5) if policy == "drain" else DisconnectPolicy.cancel()
            )
            return PipeResponse(pipe, media_type="text/event-stream")

        app = PipeApp(make)
        async with asgi_server(server, app) as port:
            head_and_first_event = await get_then_leave(port, "/", 60)
            assert b"text/event-stream" in head_and_first_event
            await wait_until(lambda: origin.exchanges and origin.exchanges[0].outcome != "streaming", 2, "the origin")
            pipe = app.responses[0].pipe
            assert pipe is not None
            await wait_until(lambda: pipe.state != "open", 2, "the pipe to finish")
    if policy == "drain":
        assert usage == [Origin.USAGE]
        assert origin.exchanges[0].outcome == "complete"
        assert pipe.state == "closed" and pipe.end_reason == "drained"
    else:
        assert usage == []
        assert origin.exchanges[0].outcome == "client-gone"
        assert pipe.state == "cancelled" and pipe.end_reason == "client-gone"


async def test_drain_policy_time_bound_releases_an_idle_upstream(impl: ModuleType) -> None:
    releases = Releases()

    async def make(_scope: Scope) -> PipeResponse:
        drain = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.3)
        pipe = impl.Pipe(chunks(3, 1000, then="hang"), Owner(), on_release=releases, on_disconnect=drain)
        return PipeResponse(pipe)

    async with asgi_server("uvicorn-httptools", PipeApp(make)) as port:
        await get_then_leave(port, "/", 3000)
        left_at = time.monotonic()
        state, released_at = await releases.wait(2)
    assert state == "cancelled"
    assert 0.2 <= released_at - left_at < 1.0


async def test_drain_policy_byte_bound_stops_reading(impl: ModuleType) -> None:
    releases = Releases()
    pipes = []

    async def make(_scope: Scope) -> PipeResponse:
        pipe = impl.Pipe(chunks(10_000, 1000, delay=0.0005), Owner(), on_release=releases)
        pipe.on_disconnect = DisconnectPolicy.drain(max_bytes=20_000, timeout=10)
        pipes.append(pipe)
        return PipeResponse(pipe)

    async with asgi_server("uvicorn-httptools", PipeApp(make)) as port:
        await get_then_leave(port, "/", 5000)
        state, _ = await releases.wait(5)
    assert state == "cancelled" and pipes[0].end_reason == "drain-cut-max-bytes"
    assert pipes[0].nbytes < 400_000, "the drain read far past its byte bound"


@pytest.mark.parametrize("server", ["uvicorn-httptools", "hypercorn"])
async def test_head_request_sends_no_body_and_releases_the_pipe(impl: ModuleType, server: str) -> None:
    releases = Releases()

    async def make(_scope: Scope) -> PipeResponse:
        return PipeResponse(impl.Pipe(chunks(3, 10), Owner(), on_release=releases), headers={"x-a": "1"})

    async with asgi_server(server, PipeApp(make)) as port, httpx.AsyncClient() as client:
        response = await client.head(f"http://127.0.0.1:{port}/")
    assert response.status_code == 200 and response.content == b""
    assert releases.calls[0][0] == "cancelled"


async def test_bodyless_pipe_none_sends_an_empty_body() -> None:
    async def make(_scope: Scope) -> PipeResponse:
        return PipeResponse(None, status=204)

    async with asgi_server("uvicorn-httptools", PipeApp(make)) as port, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.status_code == 204 and response.content == b""


# -- Starlette and FastAPI ------------------------------------------------------------------------------------


async def test_pipe_response_as_a_starlette_route_response(impl: ModuleType) -> None:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.routing import Route

    ran: list[str] = []

    async def after() -> None:
        ran.append("background")

    async def endpoint(_request: Request) -> PipeResponse:
        pipe = impl.Pipe(chunks(10, 500))
        return PipeResponse(pipe, status=201, media_type="application/x-test", background=BackgroundTask(after))

    app = Starlette(routes=[Route("/stream", endpoint)])
    async with asgi_server("uvicorn-httptools", app) as port, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/stream")
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/x-test"
    assert response.content == pattern(10, 500)
    assert ran == ["background"]


async def test_pipe_response_returned_by_a_fastapi_route(impl: ModuleType) -> None:
    app = FastAPI()
    releases = Releases()
    ran: list[str] = []

    @app.get("/stream")
    async def stream(tasks: BackgroundTasks) -> PipeResponse:
        tasks.add_task(ran.append, "background")  # FastAPI hands its tasks to the returned response
        return PipeResponse(impl.Pipe(chunks(10, 500), Owner(), on_release=releases), headers={"x-a": "1"})

    async with asgi_server("uvicorn-httptools", app) as port, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/stream")
        assert response.content == pattern(10, 500)
        assert response.headers["x-a"] == "1"
        await get_then_leave(port, "/stream", 0)  # nothing read: the client leaves at once
        await wait_until(lambda: len(releases.calls) == 2, 1.0, "the second pipe to be released")
    assert releases.calls[0][0] == "closed"
    assert ran[0] == "background"


# -- misuse ---------------------------------------------------------------------------------------------------


def test_pipe_response_refuses_header_injection_and_bad_status() -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        PipeResponse(None, headers={"x-a": "ok\r\nSet-Cookie: evil=1"})
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        PipeResponse(None, headers=[(b"x-a\n", b"1")])
    with pytest.raises(TypeError, match="str or bytes"):
        PipeResponse(None, headers=[("x-a", 1)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="status"):
        PipeResponse(None, status=42)
    with pytest.raises(TypeError, match="DisconnectPolicy"):
        PipeResponse(None, on_disconnect="drain")  # type: ignore[arg-type]


async def test_the_old_on_disconnect_keyword_still_works_with_a_deprecation_warning(impl: ModuleType) -> None:
    releases = Releases()
    responses: list[PipeResponse] = []

    async def make(_scope: Scope) -> PipeResponse:
        pipe = impl.Pipe(chunks(3, 1000, then="hang"), Owner(), on_release=releases)
        with pytest.deprecated_call(match="belongs to the pipe"):
            response = PipeResponse(pipe, on_disconnect=DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.3))
        responses.append(response)
        return response

    async with asgi_server("uvicorn-httptools", PipeApp(make)) as port:
        await get_then_leave(port, "/", 3000)
        left_at = time.monotonic()
        state, released_at = await releases.wait(2)
    assert state == "cancelled"
    assert 0.2 <= released_at - left_at < 1.0, "the keyword's drain policy was not applied"
    assert responses[0].pipe is not None and responses[0].pipe.end_reason == "drain-cut-timeout"


async def test_pipe_response_refuses_a_websocket_scope(impl: ModuleType) -> None:
    pipe = impl.Pipe(chunks(1, 1))
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    with pytest.raises(RuntimeError, match="HTTP requests"):
        await PipeResponse(pipe)({"type": "websocket"}, receive, send)
    assert sent == [] and pipe.state == "cancelled"


# -- a handler that raises after tee(): the upstream must not stay checked out -------------------------------


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("policy", ["drain", "cancel"])
async def test_a_handler_raising_after_tee_releases_the_upstream_within_the_bounds(
    impl: ModuleType, origin: Origin, policy: str
) -> None:
    """FastAPI + httpx + tee, and the handler fails before its response starts. The primary is never
    served: under ``drain`` the upstream is released at the drain's timeout, under ``cancel`` as soon as
    the primary is collected; the usage branch learns why it was cut."""
    from fastpipe.sources import from_httpx
    from fastpipe.tee import tee

    app = FastAPI()
    sides: list[Any] = []
    drain = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.5)
    async with httpx.AsyncClient() as client:

        async def read_side(side: Any) -> None:
            async for _chunk in side:
                pass

        @app.get("/")
        async def route() -> PipeResponse:
            upstream = await client.send(client.build_request("GET", origin.url("/sse?n=3&then=hang")), stream=True)
            pipe = from_httpx(upstream, pipe_type=impl.Pipe, on_disconnect=drain if policy == "drain" else CANCEL)
            _to_client, to_billing = tee(pipe, 2)  # the handler fails before serving _to_client
            sides.append(to_billing)
            task = asyncio.ensure_future(read_side(to_billing))
            task.add_done_callback(lambda t: t.exception())
            raise RuntimeError("the handler failed before its response started")

        async with asgi_server("uvicorn-httptools", app) as port, httpx.AsyncClient() as gateway_client:
            response = await gateway_client.get(f"http://127.0.0.1:{port}/")
            assert response.status_code == 500
            failed_at = time.monotonic()
            for _ in range(150):  # bounded: 3 s
                gc.collect()
                if origin.exchanges and origin.exchanges[0].outcome != "streaming":
                    break
                await asyncio.sleep(0.02)
            released_after = time.monotonic() - failed_at
    assert origin.exchanges[0].outcome == "client-gone", "the upstream stayed checked out for a response never sent"
    # Generous on a loaded machine: what matters is released at all, soon after the bound (0.5 s) or GC.
    assert released_after < (2.0 if policy == "drain" else 1.5)
    assert sides[0].end_reason == ("drain-cut-timeout" if policy == "drain" else "client-gone")


# -- middleware: what happens to an upstream failure on its way out ----------------------------------------


async def raw_get(port: int) -> bytes:
    """The raw bytes of one GET, read until the server closes (or 5 s pass)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = b""
    try:
        for _ in range(1000):  # bounded
            part = await asyncio.wait_for(reader.read(65536), 5)
            if not part:
                break
            data += part
    except (ConnectionError, asyncio.TimeoutError):
        pass
    finally:
        writer.transport.abort()
    return data


class TimingMiddleware:
    """The pure-ASGI middleware shape: it wraps the app and lets its exceptions through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            self.seen.append(type(exc).__name__)  # log it, then let the server abort the response
            raise


def failing_app(impl: ModuleType, pipes: list[Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def route() -> PipeResponse:
        pipes.append(impl.Pipe(chunks(5, 1000, then="fail")))
        return PipeResponse(pipes[-1])

    return app


async def test_base_http_middleware_turns_an_upstream_failure_into_a_clean_end(impl: ModuleType) -> None:
    """A documented limitation of Starlette's BaseHTTPMiddleware (``@app.middleware("http")``), asserted
    as it really is: it catches the exception, ends the chunked body with its terminator, and re-raises
    only afterwards. The client sees a complete 200; only the pipe's end_reason tells the truth."""
    pipes: list[Any] = []
    app = failing_app(impl, pipes)

    @app.middleware("http")
    async def passthrough(request: Request, call_next: Any) -> Any:
        return await call_next(request)

    async with asgi_server("uvicorn-httptools", app) as port:
        raw = await raw_get(port)
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.endswith(b"\r\n0\r\n\r\n"), "BaseHTTPMiddleware no longer ends the body cleanly: update the README"
    assert response.status_code == 200 and response.content == pattern(5, 1000)  # looks whole; it is not
    assert [pipe.end_reason for pipe in pipes] == ["upstream-error", "upstream-error"]


async def test_pure_asgi_middleware_keeps_an_upstream_failure_visible(impl: ModuleType) -> None:
    pipes: list[Any] = []
    app = TimingMiddleware(failing_app(impl, pipes))
    async with asgi_server("uvicorn-httptools", app) as port:
        raw = await raw_get(port)
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(f"http://127.0.0.1:{port}/")
    assert raw.startswith(b"HTTP/1.1 200 ") and b"\r\n0\r\n\r\n" not in raw, "the broken body must not end cleanly"
    assert app.seen == ["UpstreamBroke", "UpstreamBroke"]


# -- every server: forced GC, and repeated disconnects leave nothing behind ----------------------------------


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_full_download_under_forced_gc(impl: ModuleType, server: str, origin: Origin) -> None:
    """The gateway keeps nothing but the pipe; gc.collect() runs every 5 ms in the server's loop."""
    owners: list[weakref.ref[Any]] = []
    async with aiohttp.ClientSession() as session:

        async def make(_scope: Scope) -> PipeResponse:
            upstream = await session.get(origin.url("/chunks?n=200&size=8000&delay=0.001"))
            owners.append(weakref.ref(upstream))
            return PipeResponse(from_aiohttp(upstream, pipe_type=impl.Pipe))

        async def collect() -> None:
            for _ in range(4000):  # bounded: 20 s
                gc.collect()
                await asyncio.sleep(0.005)

        collector = asyncio.ensure_future(collect())
        try:
            async with asgi_server(server, PipeApp(make)) as port, httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/")
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(pattern(200, 8000)).digest()
    gc.collect()
    assert owners[0]() is None, "the upstream response outlived its body"


@pytest.mark.parametrize("server", ASGI_SERVERS)
async def test_repeated_disconnects_leave_no_live_owner_and_no_descriptor_growth(
    impl: ModuleType, server: str, origin: Origin
) -> None:
    owners: list[weakref.ref[Any]] = []
    async with aiohttp.ClientSession() as session:

        async def make(_scope: Scope) -> PipeResponse:
            upstream = await session.get(origin.url("/chunks?n=3&size=1000&then=hang"))
            owners.append(weakref.ref(upstream))
            return PipeResponse(from_aiohttp(upstream, pipe_type=impl.Pipe))

        async with asgi_server(server, PipeApp(make)) as port:
            await get_then_leave(port, "/", 3000)  # warm-up: pools, loggers, lazily opened files
            await wait_until(lambda: origin.exchanges[-1].outcome == "client-gone", 2, "the warm-up upstream")
            before = open_descriptors()
            for _ in range(30):
                await get_then_leave(port, "/", 3000)
            await wait_until(
                lambda: all(exchange.outcome == "client-gone" for exchange in origin.exchanges), 3, "every upstream"
            )
            gc.collect()
            await settle()
            after = open_descriptors()
    assert len(owners) == 31
    assert [ref for ref in owners if ref() is not None] == [], "an owner outlived its client"
    assert after - before <= 2, f"descriptors grew from {before} to {after} over 30 disconnects"
