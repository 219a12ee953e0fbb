"""An aiohttp gateway: stream an upstream aiohttp response through a Pipe, and bill the usage it reports.

    python examples/aiohttp_gateway.py --upstream http://127.0.0.1:9000 --port 8080
    curl -N http://127.0.0.1:8080/proxy/v1/chat/completions -d '{"model": "m", "stream": true, ...}'

``/proxy/<path>`` (GET or POST) sends the request on to ``<upstream>/<path>`` with the app's
``ClientSession`` and streams the answer with ``stream_response``: ``StreamResponse.write()`` paces the
upstream by the client. The client response is the pipe's owner and is released to the connection pool
at the end (closed on error or cancel). ``capture_usage`` prints the OpenAI-style usage once the body is
over; the pipe's drain policy reads on (within bounds) after an early disconnect, so it is still seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
from functools import partial
from typing import AsyncIterator

import aiohttp
from aiohttp import web

from fastpipe import DisconnectPolicy, EndReason, Usage, capture_usage, from_aiohttp
from fastpipe.aiohttp import stream_response

PASSED_HEADERS = ("Content-Type", "Cache-Control")
DRAIN = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=30)
SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


def bill(path: str, usage: Usage, outcome: EndReason) -> None:
    """Called once per response, after its body is over, however it ended."""
    print("usage", json.dumps({"path": path, "usage": dataclasses.asdict(usage), "outcome": outcome}), flush=True)


async def proxy(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    url = f"{request.app[UPSTREAM]}/{path}"
    headers = {"Content-Type": request.headers.get("Content-Type", "")}
    upstream = await request.app[SESSION].request(
        request.method, url, params=request.query, data=await request.read(), headers=headers
    )
    passed = {name: upstream.headers[name] for name in PASSED_HEADERS if name in upstream.headers}
    pipe = capture_usage(from_aiohttp(upstream, on_disconnect=DRAIN), "openai", partial(bill, path))
    return await stream_response(request, pipe, status=upstream.status, headers=passed)


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.router.add_route("*", "/proxy/{path:.*}", proxy)

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
