"""Real origins for the gateway tests: small aiohttp servers that say who they are and what they got."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from aiohttp import web

if TYPE_CHECKING:
    from typing_extensions import Self

from fastpipe.http import ExchangeRecord, proxy_of, shutdown_proxy, start_proxy


class AppOrigin:
    """An aiohttp origin on 127.0.0.1: ``start`` serves the routes ``routes`` adds (every path to
    ``handle`` by default), ``stop`` ends it."""

    runner: web.AppRunner | None = None
    port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    async def start(self, port: int = 0) -> Self:
        app = web.Application()
        self.routes(app)
        self.runner, self.port = await serve_app(app, port)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


_Origin = TypeVar("_Origin", bound=AppOrigin)


@asynccontextmanager
async def running(*made: _Origin) -> AsyncIterator[list[_Origin]]:
    """Start ``made``, yield them, stop them whatever happened."""
    started: list[_Origin] = []
    try:
        for origin in made:
            started.append(await origin.start())
        yield started
    finally:
        for origin in started:
            await origin.stop()


class NamedOrigin(AppOrigin):
    """An aiohttp server answering every path with JSON: its name, the method, path and headers it got.

    ``/slow?seconds=S`` answers after S seconds; ``/status/N`` answers status N. ``requests`` counts
    what reached it, ``in_flight`` what it is answering now.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = {
            "server": self.name,
            "method": request.method,
            "path": request.path_qs,
            "headers": dict(request.headers),
            "body": body.decode("latin-1"),
        }
        self.requests.append(seen)
        self.in_flight += 1
        try:
            if request.path == "/slow":
                await asyncio.sleep(float(request.query.get("seconds", "1")))
            status = int(request.path.rsplit("/", 1)[1]) if request.path.startswith("/status/") else 200
            return web.json_response(seen, status=status)
        finally:
            self.in_flight -= 1


async def serve_app(app: web.Application, port: int = 0) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on 127.0.0.1 (a free port by default); a response still being written when the test
    ends is cut after half a second, not aiohttp's 60. Stop it with ``runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


async def wait_records(records: list[ExchangeRecord], count: int, timeout: float = 5.0) -> list[ExchangeRecord]:
    """Wait (bounded) until ``count`` exchanges have ended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(records) < count:
        if loop.time() > deadline:
            raise AssertionError(f"only {len(records)} of {count} exchanges ended: {records}")
        await asyncio.sleep(0.01)
    return records


@asynccontextmanager
async def origins(*names: str) -> AsyncIterator[list[NamedOrigin]]:
    async with running(*(NamedOrigin(name) for name in names)) as started:
        yield started


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


_CLIENT_TLS = ssl.create_default_context()  # made once: httpx makes one per client otherwise (~80 ms each)


class Gateway:
    """A started gateway proxy: its URL, the records of ended exchanges, and a client."""

    def __init__(self, server: Any, records: list[ExchangeRecord]) -> None:
        self.server = server
        self.records = records
        self.proxy = proxy_of(server)
        self.port: int = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.AsyncClient(base_url=self.url, timeout=10.0, verify=_CLIENT_TLS)

    async def get(self, path: str, **options: Any) -> httpx.Response:
        return await self.client.get(path, **options)

    async def seen_by(self, path: str, **options: Any) -> str:
        """The name of the origin that answered ``GET path``."""
        response = await self.get(path, **options)
        assert response.status_code == 200, response.text
        return str(response.json()["server"])

    async def wait_records(self, count: int, timeout: float = 5.0) -> list[ExchangeRecord]:
        return await wait_records(self.records, count, timeout)


@asynccontextmanager
async def gateway(config: Mapping[str, Any], **options: Any) -> AsyncIterator[Gateway]:
    """Serve ``config`` (a dict as the TOML file would be) on a free port of 127.0.0.1."""
    records: list[ExchangeRecord] = []
    server = await start_proxy(config=config, host="127.0.0.1", port=0, on_exchange=records.append, **options)
    running = Gateway(server, records)
    try:
        yield running
    finally:
        await running.client.aclose()
        await shutdown_proxy(server, grace=0.5)


def group(*servers: str, **settings: Any) -> dict[str, Any]:
    return {"servers": list(servers), **settings}


def body_of(response: httpx.Response) -> dict[str, Any]:
    return dict(json.loads(response.text))
