"""Per-chunk cost of a Pipe over 100,000 chunks, against the raw source and an async-generator passthrough.

Run with ``make bench`` (pytest-benchmark). The summary at the end prints ns per chunk, the cost each
wrapper adds over the raw source, and the compiled Pipe's overhead as a fraction of the passthrough's;
``--chart PATH`` also draws it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import uvloop

import fastpipe._pipe as compiled
import fastpipe._pipe_py as twin

CHUNKS = 100_000
CHUNK = b"x" * 64

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


async def raw_source() -> AsyncIterator[bytes]:
    for _ in range(CHUNKS):
        yield CHUNK


async def passthrough(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in source:
        yield chunk


WRAPPERS: dict[str, Callable[[], Any]] = {
    "raw": raw_source,
    "pipe-c": lambda: compiled.Pipe(raw_source(), object()),
    "pipe-py": lambda: twin.Pipe(raw_source(), object()),
    "agen-passthrough": lambda: passthrough(raw_source()),
}


async def consume(stream: Any) -> int:
    count = 0
    async for _ in stream:
        count += 1
    return count


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_pipe_overhead(benchmark: Any, wrapper: str, loop_name: str) -> None:
    loop = LOOPS[loop_name]()
    make = WRAPPERS[wrapper]
    try:
        counted = benchmark.pedantic(
            lambda: loop.run_until_complete(consume(make())), rounds=7, iterations=1, warmup_rounds=1
        )
    finally:
        loop.close()
    assert counted == CHUNKS
    benchmark.extra_info["chunks"] = CHUNKS
