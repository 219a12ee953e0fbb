"""Each program in examples/ runs as a real subprocess against a local origin, and is checked end to end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import openai
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


SSE_USAGE = {"input_tokens": 11, "output_tokens": 22, "model": None, "complete": True}
GATEWAYS = ["fastapi_gateway.py", "aiohttp_gateway.py"]


async def usage_report(program: Program) -> Any:
    return json.loads((await program.line()).removeprefix("usage "))


@pytest.mark.parametrize("name", GATEWAYS)
async def test_gateway_streams_the_body_and_reports_the_usage(name: str, origin: Origin) -> None:
    async with example(name, origin.url("")) as program, httpx.AsyncClient() as client:
        response = await client.get(program.url("/proxy/sse?n=8"))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.content == sse_body(8, Origin.USAGE)
        report = await usage_report(program)
        assert (report["usage"], report["outcome"]) == (SSE_USAGE, "complete")

        binary = await client.get(program.url("/proxy/chunks?n=40&size=3000"))
        assert binary.content == pattern(40, 3000)
        report = await usage_report(program)
        assert report["usage"]["input_tokens"] is None and report["outcome"] == "complete"


@pytest.mark.parametrize("name", GATEWAYS)
async def test_gateway_still_reports_the_usage_of_a_client_that_left(name: str, origin: Origin) -> None:
    async with example(name, origin.url("")) as program:
        await get_then_leave(program.port, "/proxy/sse?n=10&delay=0.03", 50)
        report = await usage_report(program)
        assert (report["usage"], report["outcome"]) == (SSE_USAGE, "drained")
    assert origin.exchanges[0].outcome == "complete"


@pytest.mark.parametrize("name", GATEWAYS)
async def test_gateway_serves_the_openai_sdk_and_bills_its_stream(name: str, origin: Origin) -> None:
    async with example(name, origin.url("")) as program:
        sdk = openai.AsyncOpenAI(base_url=program.url("/proxy/v1"), api_key="test", max_retries=0)
        stream = await sdk.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join([choice.delta.content or "" async for chunk in stream for choice in chunk.choices])
        report = await usage_report(program)
        await sdk.close()
    assert text == "tok0 tok1 tok2 tok3 "
    assert report["usage"] == {"input_tokens": 7, "output_tokens": 4, "model": "gpt-test", "complete": True}
    assert report["outcome"] == "complete"


async def test_asyncio_relay_passes_the_upstream_response_through(origin: Origin) -> None:
    async with example("asyncio_relay.py", origin.url("")) as program, httpx.AsyncClient() as client:
        for framing in ("chunked", "length"):
            response = await client.get(program.url(f"/chunks?n=100&size=5000&framing={framing}"))
            assert response.status_code == 200
            assert response.content == pattern(100, 5000)
        bad = await client.post(program.url("/chunks"))
        assert bad.status_code == 400
