"""Retention: until it finishes, the pipe alone keeps owner, source and iterator alive."""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import ModuleType
from typing import Any

from ._support import END, Owner, ScriptedSource, Stall, drain, pull


class _CyclicOwner(Owner):
    """An owner in a reference cycle, like a client response: only the cycle collector frees it."""

    def __init__(self) -> None:
        super().__init__("cyclic")
        self.myself = self


async def test_owner_survives_gc_with_only_the_pipe_holding_it(impl: ModuleType) -> None:
    owner = _CyclicOwner()
    owner_ref = weakref.ref(owner)
    pipe = impl.Pipe(ScriptedSource([b"a", b"b"]), owner)
    del owner
    gc.collect()
    assert owner_ref() is not None
    assert pipe.owner is owner_ref()
    assert await pull(pipe) == b"a"
    gc.collect()
    assert owner_ref() is not None
    assert await drain(pipe) == [b"b"]
    gc.collect()
    assert owner_ref() is None
    assert pipe.owner is None


async def test_source_and_iterator_survive_gc_until_the_end(impl: ModuleType) -> None:
    source = ScriptedSource([b"a", b"b"])
    source_ref = weakref.ref(source)
    pipe = impl.Pipe(source)
    del source
    gc.collect()
    assert source_ref() is not None
    await pull(pipe)
    # The iterator is reachable only through the pipe now; it holds the source.
    gc.collect()
    assert source_ref() is not None
    await drain(pipe)
    gc.collect()
    assert source_ref() is None


async def test_owner_survives_when_pipe_is_reachable_only_from_a_running_task(impl: ModuleType) -> None:
    stall = Stall()
    chunks: list[Any] = []

    async def consume(pipe: Any) -> None:
        async for chunk in pipe:
            chunks.append(chunk)

    owner = _CyclicOwner()
    owner_ref = weakref.ref(owner)
    pipe = impl.Pipe(ScriptedSource([b"a", stall, b"c"]), owner)
    pipe_ref = weakref.ref(pipe)
    task = asyncio.ensure_future(consume(pipe))
    del owner, pipe
    await stall.reached()
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0)
    # Nothing but the suspended task (through the stall's future) reaches the pipe.
    assert pipe_ref() is not None
    assert owner_ref() is not None
    stall.resolve(b"b")
    await task
    assert chunks == [b"a", b"b", b"c"]
    gc.collect()
    assert owner_ref() is None


async def test_owner_released_at_the_end_without_gc(impl: ModuleType) -> None:
    # Release drops the reference at once; a refcounted owner dies without waiting for the collector.
    owner = Owner()
    owner_ref = weakref.ref(owner)
    pipe = impl.Pipe(ScriptedSource([b"a", END]), owner)
    del owner
    assert await drain(pipe) == [b"a"]
    assert owner_ref() is None
