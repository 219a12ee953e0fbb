"""One for one: each pull asks the source for exactly one chunk; no read-ahead, no buffering."""

from __future__ import annotations

from types import ModuleType

import pytest

from ._support import BareSource, pull, unique_chunks


async def test_each_pull_asks_the_source_for_exactly_one_chunk(impl: ModuleType) -> None:
    chunks = unique_chunks(5)
    source = BareSource(chunks)
    pipe = impl.Pipe(source)
    assert source.anext_calls == 0
    for index, chunk in enumerate(chunks, start=1):
        assert await pull(pipe) is chunk
        assert source.anext_calls == index
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)
    assert source.anext_calls == len(chunks) + 1


async def test_finished_pipe_never_asks_the_source_again(impl: ModuleType) -> None:
    source = BareSource([b"only"])
    pipe = impl.Pipe(source)
    assert [chunk async for chunk in pipe] == [b"only"]
    calls = source.anext_calls
    for _ in range(3):
        with pytest.raises(StopAsyncIteration):
            await pull(pipe)
    assert source.anext_calls == calls == 2
