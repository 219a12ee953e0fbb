"""Concurrency: two pulls at once on one pipe raise RuntimeError, like an async generator."""

from __future__ import annotations

import asyncio
from types import ModuleType

import pytest

from ._support import Owner, ScriptedSource, Stall, drain, pull


async def test_second_pull_while_one_is_pending_raises_runtime_error(impl: ModuleType) -> None:
    stall = Stall()
    source = ScriptedSource([stall, b"b"])
    pipe = impl.Pipe(source, Owner())
    first = asyncio.ensure_future(pull(pipe))
    await stall.reached()
    with pytest.raises(RuntimeError):
        await pull(pipe)
    # The refused pull touched nothing: the first one still completes and the stream goes on.
    assert source.anext_calls == 1
    assert pipe.state == "open"
    stall.resolve(b"a")
    assert await first == b"a"
    assert await drain(pipe) == [b"b"]
    assert pipe.state == "closed"


async def test_second_pull_on_a_pushed_pipe_while_one_waits_raises_runtime_error(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())
    first = asyncio.ensure_future(pull(pipe))
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        await pull(pipe)
    pipe.feed(b"a")
    assert await first == b"a"
    pipe.feed_eof()
    assert await drain(pipe) == []
    assert pipe.state == "closed"


async def test_a_pull_after_aclose_ends_while_another_pull_is_still_pending(impl: ModuleType) -> None:
    """Once cancelled, every later pull ends with StopAsyncIteration, also while an earlier read waits."""
    stall = Stall()
    pipe = impl.Pipe(ScriptedSource([stall, b"b"]), Owner())
    first = asyncio.ensure_future(pull(pipe))
    await stall.reached()
    await pipe.aclose()
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)
    stall.resolve(b"a")
    with pytest.raises(StopAsyncIteration):
        await first
    assert pipe.state == "cancelled" and pipe.owner is None


async def test_a_pull_after_cancel_ends_while_a_pushed_pipe_pull_is_still_waiting(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())
    first = asyncio.ensure_future(pull(pipe))
    await asyncio.sleep(0)
    pipe.cancel()
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)
    with pytest.raises(StopAsyncIteration):
        await first
