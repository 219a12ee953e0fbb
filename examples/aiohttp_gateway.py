"""An aiohttp gateway: stream an upstream aiohttp response through a Pipe, with a usage tap on it.

    python examples/aiohttp_gateway.py --upstream http://127.0.0.1:9000 --port 8080
    curl -N http://127.0.0.1:8080/proxy/v1/chat/completions

``GET /proxy/<path>`` fetches ``<upstream>/<path>`` with the app's ``ClientSession`` and streams it with
``stream_response``: ``StreamResponse.write()`` paces the upstream by the client. The client response is
the pipe's owner and is released to the connection pool at the end (closed on error or cancel). An
``EventTap`` on the pipe prints the OpenAI-style ``usage`` as soon as its event passes; the drain policy
keeps reading (within bounds) after an early disconnect, so that event still passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from typing import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from fastpipe.aiohttp import stream_response
from fastpipe.sources import from_aiohttp
from fastpipe.sse import Event, EventTap
from fastpipe.tee import DisconnectPolicy

PASSED_HEADERS = ("Content-Type", "Cache-Control")
ON_DISCONNECT = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=30)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def print_usage(path: str) -> Callable[[Event], None]:
    def on_event(event: Event) -> None:
        if event.data.startswith("{"):
            payload = json.loads(event.data)
            if payload.get("usage"):
                print("usage", json.dumps({"path": path, "usage": payload["usage"]}), flush=True)

    return on_event


async def proxy(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    url = f"{request.app[UPSTREAM]}/{path}"
    upstream = await request.app[SESSION].get(url, params=request.query)
    headers = {name: upstream.headers[name] for name in PASSED_HEADERS if name in upstream.headers}
    pipe = from_aiohttp(upstream).tap(EventTap(print_usage(path)))
    return await stream_response(request, pipe, status=upstream.status, headers=headers, on_disconnect=ON_DISCONNECT)


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.router.add_get("/proxy/{path:.*}", proxy)

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        # aiohttp decompresses: the pipe carries the decoded body, so Content-Encoding is not passed on.
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_context)
    return app


async def serve(upstream: str, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(upstream), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL of the upstream, e.g. http://127.0.0.1:9000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.upstream, args.host, args.port))


if __name__ == "__main__":
    main()
