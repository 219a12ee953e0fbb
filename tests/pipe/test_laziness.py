"""Lazy: building a pipe touches nothing on the source; the first pull opens it, exactly once."""

from __future__ import annotations

from types import ModuleType

from ._support import AccessRecordingSource, Owner, accesses_of, aiter_calls_of, drain, pull


async def test_constructor_touches_nothing_on_the_source(impl: ModuleType) -> None:
    source = AccessRecordingSource([b"a"])
    pipe = impl.Pipe(source, Owner(), on_release=lambda pipe: None)
    assert accesses_of(source) == []
    assert aiter_calls_of(source) == 0
    await pipe.aclose()


async def test_aiter_returns_the_pipe_itself_without_touching_the_source(impl: ModuleType) -> None:
    source = AccessRecordingSource([b"a"])
    pipe = impl.Pipe(source)
    assert pipe.__aiter__() is pipe
    assert aiter(pipe) is pipe
    assert accesses_of(source) == []
    assert aiter_calls_of(source) == 0
    pipe.cancel()


async def test_first_pull_calls_source_aiter_exactly_once(impl: ModuleType) -> None:
    source = AccessRecordingSource([b"a", b"b", b"c"])
    pipe = impl.Pipe(source)
    assert await pull(pipe) == b"a"
    assert aiter_calls_of(source) == 1
    assert await drain(pipe) == [b"b", b"c"]
    assert aiter_calls_of(source) == 1


async def test_pull_on_empty_source_still_opens_it_once(impl: ModuleType) -> None:
    source = AccessRecordingSource([])
    pipe = impl.Pipe(source)
    assert await drain(pipe) == []
    assert aiter_calls_of(source) == 1
    assert pipe.state == "closed"
