"""on_release: exactly once, synchronously, after the owner is dropped and the final state is set.

An exception from it goes to the loop's exception handler, never into the stream.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import ModuleType
from typing import Any

import pytest

from fastpipe import PipeError

from ._endings import ENDINGS, Ending
from ._support import BareSource, Owner, ReleaseRecorder, ScriptedSource, drain, loop_errors, pull, unique_chunks


@pytest.mark.parametrize("ending", ENDINGS, ids=[ending.name for ending in ENDINGS])
async def test_on_release_runs_exactly_once_with_the_final_state_and_no_owner(impl: ModuleType, ending: Ending) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    with loop_errors() as errors:
        pipe = await ending.run(impl, owner, unique_chunks(3), released)
        del owner
        assert [(call.state, call.owner_was_none) for call in released.calls] == [(ending.final_state, True)]
        assert pipe.state == ending.final_state
        assert pipe.owner is None
        assert owner_ref() is None
        # Whatever comes later never calls it again.
        with pytest.raises((StopAsyncIteration, PipeError, RuntimeError)):
            await pull(pipe)
        await pipe.aclose()
        pipe.cancel()
        assert len(released.calls) == 1
        assert pipe.state == ending.final_state
    assert errors == []


async def test_on_release_runs_inside_the_pull_that_hits_eof(impl: ModuleType) -> None:
    released = ReleaseRecorder()
    pipe = impl.Pipe(BareSource([b"a"]), Owner(), on_release=released)
    await pull(pipe)
    assert released.calls == []
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)
    # Checked before this task yields to the loop: a deferred callback would not have run yet.
    assert len(released.calls) == 1
    assert released.calls[0].task is asyncio.current_task()


async def test_on_release_runs_inside_the_pull_that_meets_the_error(impl: ModuleType) -> None:
    released = ReleaseRecorder()
    pipe = impl.Pipe(ScriptedSource([ValueError("x")]), Owner(), on_release=released)
    with pytest.raises(ValueError):
        await pull(pipe)
    assert len(released.calls) == 1
    assert released.calls[0].task is asyncio.current_task()


@pytest.mark.parametrize("pulled_first", [False, True], ids=["idle", "open"])
async def test_on_release_runs_before_aclose_returns(impl: ModuleType, pulled_first: bool) -> None:
    released = ReleaseRecorder()
    pipe = impl.Pipe(ScriptedSource([b"a"]), Owner(), on_release=released)
    if pulled_first:
        await pull(pipe)
    await pipe.aclose()
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
    assert released.calls[0].task is asyncio.current_task()


async def test_on_release_runs_before_sync_cancel_returns(impl: ModuleType) -> None:
    released = ReleaseRecorder()
    pipe = impl.Pipe(ScriptedSource([b"a"]), Owner(), on_release=released)
    pipe.cancel()
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]


async def test_on_release_sees_the_owner_already_unreachable(impl: ModuleType) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    alive_during_release: list[bool] = []
    pipe = impl.Pipe(
        BareSource([b"a"]), owner, on_release=lambda pipe: alive_during_release.append(owner_ref() is not None)
    )
    del owner
    await drain(pipe)
    assert alive_during_release == [False]


@pytest.mark.parametrize("ending", ENDINGS, ids=[ending.name for ending in ENDINGS])
async def test_on_release_exception_goes_to_the_loop_handler_not_the_stream(impl: ModuleType, ending: Ending) -> None:
    failure = RuntimeError("metrics hook broke")
    released = ReleaseRecorder(raises=failure)
    with loop_errors() as errors:
        # The ending itself checks that the stream ends the way it would without the failing callback.
        pipe = await ending.run(impl, Owner(), unique_chunks(3), released)
        assert pipe.state == ending.final_state
    assert len(released.calls) == 1
    assert [context.get("exception") for context in errors] == [failure]
    assert all("message" in context for context in errors)


async def test_on_release_exception_does_not_replace_the_source_error(impl: ModuleType) -> None:
    error = ConnectionResetError("upstream reset")
    failure = RuntimeError("metrics hook broke")
    with loop_errors() as errors:
        pipe = impl.Pipe(ScriptedSource([error]), Owner(), on_release=ReleaseRecorder(raises=failure))
        with pytest.raises(ConnectionResetError) as caught:
            await pull(pipe)
    assert caught.value is error
    assert pipe.exception is error
    assert [context.get("exception") for context in errors] == [failure]


async def test_pipe_without_on_release_releases_the_owner(impl: ModuleType) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    pipe = impl.Pipe(BareSource([b"a"]), owner)
    del owner
    await drain(pipe)
    gc.collect()
    assert owner_ref() is None
    assert pipe.owner is None


async def test_on_release_may_read_the_pipe_to_choose_pool_return_or_close(impl: ModuleType) -> None:
    decisions: list[str] = []

    def return_or_close(pipe: Any) -> None:
        decisions.append("pool" if pipe.state == "closed" else "close")

    for script in ([b"a"], [b"a", ValueError("x")]):
        pipe = impl.Pipe(ScriptedSource(script), Owner(), on_release=return_or_close)
        try:
            await drain(pipe)
        except ValueError:
            pass
    await impl.Pipe(ScriptedSource([b"a"]), Owner(), on_release=return_or_close).aclose()
    assert decisions == ["pool", "close", "close"]
