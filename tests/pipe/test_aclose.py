"""Cancellation by the consumer: aclose() (idempotent, any state), cancel() (sync), and async with."""

from __future__ import annotations

import weakref
from types import ModuleType

import pytest

from fastpipe import PipeError

from ._support import BareSource, Owner, ReleaseRecorder, ScriptedSource, drain, pull


async def test_aclose_before_first_pull_awaits_source_aclose_and_never_opens_it(impl: ModuleType) -> None:
    source = ScriptedSource([b"a"])
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, owner, on_release=released)
    del owner
    await pipe.aclose()
    assert (source.source_aclose_started, source.source_aclose_finished) == (1, 1)
    assert source.aiter_calls == 0
    assert source.iterator_aclose_started == 0
    assert pipe.state == "cancelled"
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)
    assert source.aiter_calls == 0


async def test_aclose_before_first_pull_of_a_source_without_aclose(impl: ModuleType) -> None:
    source = BareSource([b"a"])
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, Owner(), on_release=released)
    await pipe.aclose()
    assert source.aiter_calls == 0
    assert pipe.state == "cancelled"
    assert len(released.calls) == 1


async def test_aclose_after_a_pull_awaits_the_iterators_aclose(impl: ModuleType) -> None:
    source = ScriptedSource([b"a", b"b"])
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, owner, on_release=released)
    del owner
    assert await pull(pipe) == b"a"
    await pipe.aclose()
    assert (source.iterator_aclose_started, source.iterator_aclose_finished) == (1, 1)
    assert source.source_aclose_started == 0
    assert pipe.state == "cancelled"
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
    assert await drain(pipe) == []
    assert source.anext_calls == 1


async def test_aclose_after_a_pull_of_an_iterator_without_aclose(impl: ModuleType) -> None:
    source = BareSource([b"a", b"b"])
    pipe = impl.Pipe(source, Owner())
    await pull(pipe)
    await pipe.aclose()
    assert pipe.state == "cancelled"
    assert pipe.owner is None
    assert await drain(pipe) == []


async def test_aclose_is_idempotent(impl: ModuleType) -> None:
    source = ScriptedSource([b"a", b"b"])
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, Owner(), on_release=released)
    await pull(pipe)
    for _ in range(3):
        await pipe.aclose()
        assert pipe.state == "cancelled"
    assert source.iterator_aclose_finished == 1
    assert len(released.calls) == 1


async def test_aclose_on_a_closed_pipe_does_nothing(impl: ModuleType) -> None:
    source = ScriptedSource([b"a"])
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, Owner(), on_release=released)
    await drain(pipe)
    await pipe.aclose()
    assert pipe.state == "closed"
    assert source.iterator_aclose_started == 0
    assert len(released.calls) == 1
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)


async def test_aclose_on_an_errored_pipe_keeps_it_errored(impl: ModuleType) -> None:
    error = ValueError("boom")
    source = ScriptedSource([error])
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, Owner(), on_release=released)
    with pytest.raises(ValueError):
        await pull(pipe)
    await pipe.aclose()
    assert pipe.state == "errored"
    assert pipe.exception is error
    assert source.iterator_aclose_started == 0
    assert len(released.calls) == 1
    with pytest.raises(PipeError) as caught:
        await pull(pipe)
    assert caught.value.__cause__ is error


async def test_sync_cancel_before_first_pull_releases_at_once(impl: ModuleType) -> None:
    source = ScriptedSource([b"a"])
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, owner, on_release=released)
    del owner
    assert pipe.cancel() is None
    assert pipe.state == "cancelled"
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
    assert source.aiter_calls == 0
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)
    assert source.aiter_calls == 0


async def test_sync_cancel_after_a_pull_releases_at_once_and_ends_the_stream(impl: ModuleType) -> None:
    source = ScriptedSource([b"a", b"b"])
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, Owner(), on_release=released)
    await pull(pipe)
    pipe.cancel()
    pipe.cancel()
    assert pipe.state == "cancelled"
    assert pipe.owner is None
    assert len(released.calls) == 1
    assert await drain(pipe) == []
    assert source.anext_calls == 1
    await pipe.aclose()
    assert pipe.state == "cancelled"


async def test_sync_cancel_on_finished_pipes_keeps_their_state(impl: ModuleType) -> None:
    closed = impl.Pipe(BareSource([]))
    await drain(closed)
    errored = impl.Pipe(ScriptedSource([ValueError("x")]))
    with pytest.raises(ValueError):
        await pull(errored)
    closed.cancel()
    errored.cancel()
    assert (closed.state, errored.state) == ("closed", "errored")


async def test_context_manager_returns_the_pipe_and_acloses_on_exit(impl: ModuleType) -> None:
    source = ScriptedSource([b"a", b"b"])
    released = ReleaseRecorder()
    pipe = impl.Pipe(source, Owner(), on_release=released)
    async with pipe as entered:
        assert entered is pipe
        assert await pull(pipe) == b"a"
    assert pipe.state == "cancelled"
    assert source.iterator_aclose_finished == 1
    assert len(released.calls) == 1


async def test_context_manager_acloses_when_the_body_raises(impl: ModuleType) -> None:
    source = ScriptedSource([b"a", b"b"])
    pipe = impl.Pipe(source, Owner())
    with pytest.raises(LookupError):
        async with pipe:
            await pull(pipe)
            raise LookupError("consumer failed")
    assert pipe.state == "cancelled"
    assert pipe.owner is None
    assert source.iterator_aclose_finished == 1


async def test_context_manager_after_a_full_read_keeps_closed(impl: ModuleType) -> None:
    source = ScriptedSource([b"a"])
    async with impl.Pipe(source, Owner()) as pipe:
        assert await drain(pipe) == [b"a"]
    assert pipe.state == "closed"
    assert source.iterator_aclose_started == 0
