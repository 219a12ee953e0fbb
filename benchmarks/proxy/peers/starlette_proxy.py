"""The most common Python proxy idiom: Starlette on uvicorn, httpx ``AsyncClient.stream`` into ``StreamingResponse``.

The upstream response is sent with ``client.send(..., stream=True)`` and its raw body relayed with
``aiter_raw()``; a background task closes it when the response is done. One shared client without pool limits.
uvicorn runs with uvloop and httptools, access log off.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


def forwarded(headers: httpx.Headers | object) -> list[tuple[str, str]]:
    assert hasattr(headers, "items")
    return [(name, value) for name, value in headers.items() if name.lower() not in HOP_BY_HOP]


def make_app(upstream: str) -> Starlette:
    client = httpx.AsyncClient(
        base_url=upstream,
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        timeout=None,
    )

    async def proxy(request: Request) -> StreamingResponse:
        body = await request.body()
        upstream_request = client.build_request(
            request.method,
            httpx.URL(path=request.url.path, query=request.url.query.encode()),
            headers=forwarded(request.headers),
            content=body or None,
        )
        upstream_response = await client.send(upstream_request, stream=True)
        return StreamingResponse(
            upstream_response.aiter_raw(),
            status_code=upstream_response.status_code,
            headers=dict(forwarded(upstream_response.headers)),
            background=BackgroundTask(upstream_response.aclose),
        )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:8002", help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(
        make_app(args.upstream),
        host=host,
        port=int(port),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
