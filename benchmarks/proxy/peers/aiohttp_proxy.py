"""A reverse proxy written the usual aiohttp way: a web handler that streams a ClientSession response.

The upstream body is relayed with ``iter_any()`` (each chunk as it arrives) into a ``StreamResponse``; the
session keeps upstream connections alive (no pool limit). Runs on uvloop, access log off.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web

HOP_BY_HOP = frozenset(
    name.lower()
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)

SESSION = web.AppKey("session", aiohttp.ClientSession)


def forwarded_headers(headers: object) -> dict[str, str]:
    assert hasattr(headers, "items")
    return {name: value for name, value in headers.items() if name.lower() not in HOP_BY_HOP}


def make_app(upstream: str) -> web.Application:
    base = upstream.rstrip("/")

    async def proxy(request: web.Request) -> web.StreamResponse:
        session = request.app[SESSION]
        body = await request.read() if request.body_exists else None
        async with session.request(
            request.method,
            base + request.path_qs,
            headers=forwarded_headers(request.headers),
            data=body,
            allow_redirects=False,
        ) as upstream_response:
            response = web.StreamResponse(
                status=upstream_response.status, headers=forwarded_headers(upstream_response.headers)
            )
            if upstream_response.content_length is not None:
                response.content_length = upstream_response.content_length
            await response.prepare(request)
            async for chunk in upstream_response.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_context(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None)
        app[SESSION] = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
        )
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_context)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:8001", help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    web.run_app(
        make_app(args.upstream),
        host=host,
        port=int(port),
        access_log=None,
        print=None,
        backlog=4096,
        shutdown_timeout=1.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
