"""EOF: release first (state "closed", owner dropped, on_release called), then StopAsyncIteration."""

from __future__ import annotations

import weakref
from types import ModuleType

import pytest

from ._support import BareSource, Owner, ReleaseRecorder, drain, pull


async def test_eof_releases_before_stop_async_iteration_reaches_the_consumer(impl: ModuleType) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe(BareSource([b"a"]), owner, on_release=released)
    del owner
    assert await pull(pipe) == b"a"
    assert released.calls == []
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("closed", True)]
    assert pipe.state == "closed"


async def test_pulls_after_eof_keep_raising_stop_async_iteration(impl: ModuleType) -> None:
    released = ReleaseRecorder()
    pipe = impl.Pipe(BareSource([b"a"]), Owner(), on_release=released)
    assert await drain(pipe) == [b"a"]
    for _ in range(3):
        with pytest.raises(StopAsyncIteration):
            await pull(pipe)
    assert len(released.calls) == 1
    assert await drain(pipe) == []


async def test_async_for_over_a_finished_pipe_yields_nothing(impl: ModuleType) -> None:
    pipe = impl.Pipe(BareSource([b"a", b"b"]))
    assert [chunk async for chunk in pipe] == [b"a", b"b"]
    assert [chunk async for chunk in pipe] == []
