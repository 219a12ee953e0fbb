"""Bodies through the proxy with real clients, compared by sha256 while streaming."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import shutil
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest

from fastpipe._origin import payload, payload_sha256

from ._proxy_support import ProxyUnderTest

SIZES = [0, 1, 1024 * 1024]


async def _download(client: httpx.AsyncClient, url: str) -> tuple[int, str, int, httpx.Headers]:
    digest = hashlib.sha256()
    size = 0
    async with client.stream("GET", url) as response:
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            size += len(chunk)
        return response.status_code, digest.hexdigest(), size, response.headers


async def _upload_parts(size: int, seed: int) -> AsyncIterator[bytes]:
    for part in payload(size, seed, 50_000):
        yield part


@pytest.mark.both_loops
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_download_arrives_whole(proxied: ProxyUnderTest, size: int, framing: str) -> None:
    chunked = "&chunked=1" if framing == "chunked" else ""
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        status, digest, received, headers = await _download(client, f"/bytes?n={size}&seed=3{chunked}")
    assert status == 200
    assert received == size
    assert digest == payload_sha256(size, seed=3)
    if framing == "chunked":
        assert headers["transfer-encoding"] == "chunked"
    else:
        assert headers["content-length"] == str(size)
    [record] = await proxied.wait_records(1)
    assert record.end == "complete" and record.upstream_status == 200


@pytest.mark.both_loops
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_upload_is_streamed_and_echoed(proxied: ProxyUnderTest, size: int, framing: str) -> None:
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        if framing == "length":
            content: bytes | AsyncIterator[bytes] = b"".join(payload(size, 4))
        else:
            content = _upload_parts(size, 4)  # httpx sends an async iterable chunked
        response = await client.post("/echo", content=content)
    assert response.status_code == 200
    assert len(response.content) == size
    assert hashlib.sha256(response.content).hexdigest() == payload_sha256(size, seed=4)
    [record] = await proxied.wait_records(1)
    assert record.end == "complete"
    if size:
        assert record.request_chunks >= 1


@pytest.mark.slow
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_64_mib_download(proxied: ProxyUnderTest, framing: str) -> None:
    size = 64 * 1024 * 1024
    chunked = "&chunked=1" if framing == "chunked" else ""
    async with httpx.AsyncClient(base_url=proxied.url, timeout=30) as client:
        status, digest, received, _ = await _download(client, f"/bytes?n={size}&seed=5{chunked}")
    assert (status, received) == (200, size)
    assert digest == payload_sha256(size, seed=5)


@pytest.mark.slow
async def test_64_mib_upload_echo_streams_both_ways(proxied: ProxyUnderTest) -> None:
    # aiohttp reads the response while it still sends the body (httpx would not: a full-duplex echo of
    # 64 MiB deadlocks a client that only reads after writing, by design of flow control).
    size = 64 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxied.url}/echo", data=_upload_parts(size, 6)) as response:
            async for chunk in response.content.iter_any():
                digest.update(chunk)
                received += len(chunk)
    assert received == size
    assert digest.hexdigest() == payload_sha256(size, seed=6)


@pytest.mark.both_loops
async def test_aiohttp_client_streams_through(proxied: ProxyUnderTest) -> None:
    size = 3 * 1024 * 1024 + 17
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxied.url}/bytes?n={size}&seed=7") as response:
            digest = hashlib.sha256()
            async for chunk in response.content.iter_any():
                digest.update(chunk)
            assert response.status == 200
        async with session.get(f"{proxied.url}/tokens?n=20") as response:
            text = await response.text()
    assert digest.hexdigest() == payload_sha256(size, seed=7)
    assert text.count("data: ") == 20


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_round_trip(proxied: ProxyUnderTest) -> None:
    size = 200_000
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "10",
        f"{proxied.url}/bytes?n={size}&seed=8",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, stderr
    assert hashlib.sha256(stdout).hexdigest() == payload_sha256(size, seed=8)


@pytest.mark.both_loops
async def test_sse_tokens_arrive_one_by_one(proxied: ProxyUnderTest) -> None:
    """No coalescing: each event is readable before the next one is sent."""
    arrivals: list[float] = []
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=proxied.url) as client:
        async with client.stream("GET", "/tokens?n=5&delay=0.1") as response:
            async for chunk in response.aiter_raw():
                arrivals.extend([loop.time()] * chunk.count(b"data: "))
    assert len(arrivals) == 5
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(gap > 0.05 for gap in gaps), gaps
