"""The public surface: start_proxy's options, ProxyProtocol served by hand, the demo job."""

from __future__ import annotations

import asyncio
import inspect

import httpx
import pytest

from fastpipe.demo.proxy import run_demo
from fastpipe.http import Limits, Proxy, shutdown_proxy, start_proxy
from fastpipe.http.address import parse_upstream


def test_limits_have_documented_defaults() -> None:
    limits = Limits()
    assert limits.max_header_size == 65536
    assert limits.max_body_size is None
    assert limits.write_low_water <= limits.write_high_water
    assert all(name in (Limits.__doc__ or "") for name in Limits.__dataclass_fields__)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"header_timeout": 0}, ValueError),
        ({"upstream_timeout": -1}, ValueError),
        ({"max_header_size": 0}, ValueError),
        ({"max_body_size": -5}, ValueError),
        ({"pool_size": 1.5}, ValueError),
        ({"write_high_water": 10, "write_low_water": 20}, ValueError),
        ({"abort_on_client_eof": "yes"}, ValueError),
        ({"max_headers_size": 10}, TypeError),  # a misspelt name is not silently ignored
    ],
)
def test_bad_limits_are_refused(options: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Limits.from_options(options)


@pytest.mark.parametrize(
    ("url", "host", "port", "header"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1", 8000, b"127.0.0.1:8000"),
        ("127.0.0.1:9000", "127.0.0.1", 9000, b"127.0.0.1:9000"),
        ("http://origin.test", "origin.test", 80, b"origin.test"),
        ("http://[::1]:81/", "::1", 81, b"[::1]:81"),
        ("https://api.test", "api.test", 443, b"api.test"),  # the scheme's default port stays out of Host
        ("https://api.test:8443", "api.test", 8443, b"api.test:8443"),
    ],
)
def test_parse_upstream(url: str, host: str, port: int, header: bytes) -> None:
    address = parse_upstream(url)
    assert (address.host, address.port, address.host_header) == (host, port, header)
    assert address.tls == url.startswith("https:")


@pytest.mark.parametrize(
    "url", ["https://a.test/v1", "http://a.test/prefix", "ftp://a.test", "ws://a.test", "http://:80", "http://a:x"]
)
def test_parse_upstream_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        parse_upstream(url)


async def test_start_proxy_refuses_unknown_options(origin_port: int) -> None:
    with pytest.raises(TypeError, match="unknown proxy option"):
        await start_proxy(f"http://127.0.0.1:{origin_port}", port=0, max_headers_size=1)


async def test_protocol_factory_served_with_create_server(origin_port: int) -> None:
    factory = Proxy(f"http://127.0.0.1:{origin_port}", limits=Limits(idle_timeout=5))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/bytes?n=77")).content.__len__() == 77
    finally:
        server.close()
        await factory.shutdown(grace=0.5)
        await server.wait_closed()


async def test_start_proxy_in_another_thread(origin_port: int) -> None:
    """start_proxy works in any running loop, here asyncio's own in a fresh thread (the origin keeps
    running on the test's loop meanwhile)."""
    results: list[int] = []

    async def serve() -> None:
        server = await start_proxy(f"http://127.0.0.1:{origin_port}", port=0)
        port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            results.append(len((await client.get("/bytes?n=5")).content))
        await shutdown_proxy(server, 0.5)

    loop = asyncio.get_running_loop()
    await asyncio.wait_for(loop.run_in_executor(None, lambda: asyncio.run(serve())), 20)
    assert results == [5]


async def test_demo_job_checks_every_body(capsys: pytest.CaptureFixture[str]) -> None:
    status = await run_demo(scale=0.02, streams=4, downloads=2, uploads=2)
    out = capsys.readouterr().out
    assert status == 0
    assert "sha256 4/4 ok" in out and "sha256 2/2 ok" in out
    assert "p99 ttfb" in out


def test_start_proxy_hands_the_proxy_every_option_of_its_own() -> None:
    from fastpipe.http.proxy import _OWN_OPTIONS

    assert set(inspect.signature(Proxy).parameters) - {"upstream", "limits"} == set(_OWN_OPTIONS)
