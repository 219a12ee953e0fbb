"""Each program in examples/ runs as a real subprocess against a local origin, and is checked end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from ._support import Origin, get_then_leave, origin_server, pattern, sse_body

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class Program:
    """A running example: its port, and the lines it printed."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def line(self, timeout: float = 5) -> str:
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        assert raw, "the example exited"
        return raw.decode().strip()


@contextlib.asynccontextmanager
async def example(name: str, upstream: str) -> AsyncIterator[Program]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        "--upstream",
        upstream,
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert first.startswith("listening on http://127.0.0.1:"), f"unexpected first line {first!r}"
        yield Program(process, int(first.rsplit(":", 1)[1]))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()
    assert process.returncode == 0, f"the example exited with {process.returncode}"


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with origin_server() as server:
        yield server


@pytest.mark.parametrize("name", ["fastapi_gateway.py", "aiohttp_gateway.py"])
async def test_gateway_streams_the_body_and_reports_the_usage(name: str, origin: Origin) -> None:
    async with example(name, origin.url("")) as program, httpx.AsyncClient() as client:
        response = await client.get(program.url("/proxy/sse?n=8"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.content == sse_body(8, Origin.USAGE)
        report = json.loads((await program.line()).removeprefix("usage "))
        assert report["usage"] == Origin.USAGE

        binary = await client.get(program.url("/proxy/chunks?n=40&size=3000"))
        assert binary.content == pattern(40, 3000)
        if name == "fastapi_gateway.py":
            assert json.loads((await program.line()).removeprefix("usage "))["usage"] is None


@pytest.mark.parametrize("name", ["fastapi_gateway.py", "aiohttp_gateway.py"])
async def test_gateway_still_reports_the_usage_of_a_client_that_left(name: str, origin: Origin) -> None:
    async with example(name, origin.url("")) as program:
        await get_then_leave(program.port, "/proxy/sse?n=10&delay=0.03", 50)
        report = json.loads((await program.line()).removeprefix("usage "))
        assert report["usage"] == Origin.USAGE
    assert origin.exchanges[0].outcome == "complete"


async def test_asyncio_relay_passes_the_upstream_response_through(origin: Origin) -> None:
    async with example("asyncio_relay.py", origin.url("")) as program, httpx.AsyncClient() as client:
        for framing in ("chunked", "length"):
            response = await client.get(program.url(f"/chunks?n=100&size=5000&framing={framing}"))
            assert response.status_code == 200
            assert response.content == pattern(100, 5000)
        bad = await client.post(program.url("/chunks"))
        assert bad.status_code == 400
