"""A FastAPI gateway: stream an upstream httpx response through a Pipe, and bill the usage it reports.

    python examples/fastapi_gateway.py --upstream http://127.0.0.1:9000 --port 8080
    curl -N http://127.0.0.1:8080/proxy/v1/chat/completions

``GET /proxy/<path>`` fetches ``<upstream>/<path>`` with httpx (streaming) and returns the body as a
``PipeResponse``. The httpx response is the pipe's owner: the route keeps no reference to it, yet nothing
can close it before the body is over. The body is tee'd: the client reads the primary branch, a usage
branch parses the Server-Sent Events with an ``EventTap`` and prints the final OpenAI-style ``usage``.
With the drain policy, a client that leaves early does not erase that usage: the upstream is read on
(within 1 MiB and 30 s) for the usage branch, then released.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import Any, AsyncIterator

import httpx
import uvicorn
from fastapi import FastAPI, Request

from fastpipe.asgi import PipeResponse
from fastpipe.sources import from_httpx
from fastpipe.sse import Event, EventTap
from fastpipe.tee import BranchError, DisconnectPolicy, tee

PASSED_HEADERS = ("content-type", "cache-control")
ON_DISCONNECT = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=30)


def build_app(upstream: str) -> FastAPI:
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(10, read=None))
    usage_tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/proxy/{path:path}")
    async def proxy(path: str, request: Request) -> PipeResponse:
        # The usage tap reads the events: ask for them uncompressed (aiter_raw passes bytes on as they come).
        upstream_request = client.build_request(
            "GET", f"/{path}", params=request.query_params, headers={"accept-encoding": "identity"}
        )
        response = await client.send(upstream_request, stream=True)
        headers = {name: value for name, value in response.headers.items() if name.lower() in PASSED_HEADERS}
        to_client, to_billing = tee(from_httpx(response), 2, on_disconnect=ON_DISCONNECT)
        task = asyncio.create_task(bill_usage(path, to_billing))
        usage_tasks.add(task)
        task.add_done_callback(usage_tasks.discard)
        return PipeResponse(to_client, status=response.status_code, headers=headers)

    return app


async def bill_usage(path: str, body: Any) -> None:
    """Read the usage branch to its end; the tap keeps the last ``usage`` object it sees."""
    usage: list[Any] = []

    def on_event(event: Event) -> None:
        if event.data.startswith("{"):
            payload = json.loads(event.data)
            if payload.get("usage"):
                usage.append(payload["usage"])

    outcome = "complete"
    try:
        async for _chunk in body.tap(EventTap(on_event)):
            pass
    except BranchError as exc:
        outcome = f"cut short: {exc}"
    print("usage", json.dumps({"path": path, "usage": usage[-1] if usage else None, "body": outcome}), flush=True)


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
