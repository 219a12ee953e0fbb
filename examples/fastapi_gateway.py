"""A FastAPI gateway: stream an upstream httpx response through a Pipe, and bill the usage it reports.

    python examples/fastapi_gateway.py --upstream http://127.0.0.1:9000 --port 8080
    curl -N http://127.0.0.1:8080/proxy/v1/chat/completions -d '{"model": "m", "stream": true, ...}'

``/proxy/<path>`` (GET or POST) sends the request on to ``<upstream>/<path>`` with httpx (streaming) and
returns the body as a ``PipeResponse``. The httpx response is the pipe's owner: the route keeps no
reference to it, yet nothing can close it before the body is over. ``capture_usage`` reads the
OpenAI-style usage as the body passes (Server-Sent Events or a JSON body) and prints it once the body is
over, with how it ended. The pipe's drain policy makes a client that leaves early no way to erase that
usage: the upstream is read on (within 1 MiB and 30 s) without it, then released.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
from functools import partial
from typing import AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI, Request

from fastpipe import DisconnectPolicy, EndReason, Usage, capture_usage, from_httpx
from fastpipe.asgi import PipeResponse

PASSED_HEADERS = ("content-type", "cache-control")
DRAIN = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=30)


def build_app(upstream: str) -> FastAPI:
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(10, read=None))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.api_route("/proxy/{path:path}", methods=["GET", "POST"])
    async def proxy(path: str, request: Request) -> PipeResponse:
        # The usage tap reads the events: ask for them uncompressed (aiter_raw passes bytes on as they come).
        headers = {"accept-encoding": "identity", "content-type": request.headers.get("content-type", "")}
        upstream_request = client.build_request(
            request.method, f"/{path}", params=request.query_params, headers=headers, content=await request.body()
        )
        response = await client.send(upstream_request, stream=True)
        pipe = from_httpx(response, on_disconnect=DRAIN)
        capture_usage(pipe, "openai", partial(bill, path))
        passed = {name: value for name, value in response.headers.items() if name.lower() in PASSED_HEADERS}
        return PipeResponse(pipe, status=response.status_code, headers=passed)

    return app


def bill(path: str, usage: Usage, outcome: EndReason) -> None:
    """Called once per response, after its body is over, however it ended."""
    print("usage", json.dumps({"path": path, "usage": dataclasses.asdict(usage), "outcome": outcome}), flush=True)


async def serve(upstream: str, host: str, port: int) -> None:
    server = uvicorn.Server(uvicorn.Config(build_app(upstream), host=host, port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        bound = server.servers[0].sockets[0].getsockname()[1]
        print(f"listening on http://{host}:{bound}", flush=True)
    await task


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
