"""State and counters: idle -> open -> closed/errored/cancelled; chunks and nbytes count what passed."""

from __future__ import annotations

import array
import asyncio
from types import ModuleType
from typing import Any

import pytest

from fastpipe import PipeError

from ._support import BareSource, Owner, ScriptedSource, Stall, drain, pull, settle


class _StateSpy:
    """A source whose iterator reports the pipe's state at the moment it is asked for a chunk."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.pipe: Any = None
        self.seen: list[str] = []
        self.chunks = chunks

    def __aiter__(self) -> _StateSpy:
        self.seen.append(f"aiter:{self.pipe.state}")
        return self

    async def __anext__(self) -> bytes:
        self.seen.append(f"anext:{self.pipe.state}")
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)


async def test_state_is_idle_then_open_from_the_start_of_the_first_pull(impl: ModuleType) -> None:
    spy = _StateSpy([b"a"])
    pipe = impl.Pipe(spy)
    spy.pipe = pipe
    assert pipe.state == "idle"
    assert await pull(pipe) == b"a"
    assert pipe.state == "open"
    assert await drain(pipe) == []
    assert pipe.state == "closed"
    assert spy.seen == ["aiter:open", "anext:open", "anext:open"]


async def test_state_is_open_while_a_pull_is_pending(impl: ModuleType) -> None:
    stall = Stall()
    pipe = impl.Pipe(ScriptedSource([stall]))
    task = asyncio.ensure_future(pull(pipe))
    await stall.reached()
    assert pipe.state == "open"
    stall.resolve(b"x")
    assert await task == b"x"
    await pipe.aclose()
    assert pipe.state == "cancelled"


async def test_every_final_state_stays_under_more_pulls_and_acloses(impl: ModuleType) -> None:
    closed = impl.Pipe(ScriptedSource([b"a"]))
    errored = impl.Pipe(ScriptedSource([ValueError("x")]))
    cancelled = impl.Pipe(ScriptedSource([b"a"]))
    await drain(closed)
    with pytest.raises(ValueError):
        await pull(errored)
    await cancelled.aclose()
    for pipe, final_state, later_error in (
        (closed, "closed", StopAsyncIteration),
        (errored, "errored", PipeError),
        (cancelled, "cancelled", StopAsyncIteration),
    ):
        for _ in range(2):
            with pytest.raises(later_error):
                await pull(pipe)
            await pipe.aclose()
            pipe.cancel()
            assert pipe.state == final_state


async def test_chunks_and_nbytes_count_what_passed(impl: ModuleType) -> None:
    chunks = [b"abc", bytearray(b"de"), memoryview(b"fghij"), b""]
    pipe = impl.Pipe(BareSource(chunks), Owner())
    assert (pipe.chunks, pipe.nbytes) == (0, 0)
    await pull(pipe)
    assert (pipe.chunks, pipe.nbytes) == (1, 3)
    await drain(pipe)
    assert (pipe.chunks, pipe.nbytes) == (4, 10)
    assert pipe.owner is None


async def test_nbytes_of_a_multibyte_memoryview_counts_bytes_not_items(impl: ModuleType) -> None:
    ints = memoryview(array.array("i", range(10)))
    doubles = memoryview(array.array("d", [0.5] * 3))
    pipe = impl.Pipe(BareSource([ints, doubles]))
    await drain(pipe)
    assert len(ints) == 10
    assert pipe.chunks == 2
    assert pipe.nbytes == ints.nbytes + doubles.nbytes == 10 * ints.itemsize + 3 * 8


async def test_owner_property_is_the_owner_until_released(impl: ModuleType) -> None:
    owner = Owner()
    pipe = impl.Pipe(BareSource([b"a"]), owner)
    assert pipe.owner is owner
    await pull(pipe)
    assert pipe.owner is owner
    await drain(pipe)
    assert pipe.owner is None


async def test_exception_property_holds_the_error_of_an_errored_pipe_only(impl: ModuleType) -> None:
    error = ValueError("boom")
    errored = impl.Pipe(ScriptedSource([error]))
    with pytest.raises(ValueError):
        await pull(errored)
    assert errored.exception is error
    closed = impl.Pipe(BareSource([]))
    await drain(closed)
    assert closed.exception is None
    cancelled = impl.Pipe(BareSource([b"a"]))
    await cancelled.aclose()
    await settle(1)
    assert cancelled.exception is None
