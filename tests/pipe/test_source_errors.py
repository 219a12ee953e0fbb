"""Errors: release first, state "errored", the error itself propagates; later pulls raise PipeError from it."""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Any

import pytest

from fastpipe import PipeError

from ._support import BareSource, Owner, ReleaseRecorder, ScriptedSource, drain, pull


async def test_owner_is_already_gone_inside_the_consumers_except(impl: ModuleType) -> None:
    error = ConnectionResetError("upstream reset")
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe(ScriptedSource([b"a", error]), owner, on_release=released)
    del owner
    received: list[Any] = []
    alive_in_except: list[bool] = []
    try:
        async for chunk in pipe:
            received.append(chunk)
    except ConnectionResetError as exc:
        assert exc is error
        alive_in_except.append(owner_ref() is not None)
        assert pipe.state == "errored"
        assert pipe.owner is None
        assert [(call.state, call.owner_was_none) for call in released.calls] == [("errored", True)]
    assert received == [b"a"]
    assert alive_in_except == [False]


async def test_the_original_error_propagates_unwrapped(impl: ModuleType) -> None:
    error = KeyError("missing")
    pipe = impl.Pipe(ScriptedSource([error]))
    with pytest.raises(KeyError) as caught:
        await pull(pipe)
    assert caught.value is error
    assert pipe.exception is error


async def test_later_pulls_raise_pipe_error_chained_from_the_original(impl: ModuleType) -> None:
    error = ConnectionResetError("upstream reset")
    released = ReleaseRecorder()
    pipe = impl.Pipe(ScriptedSource([b"a", error]), Owner(), on_release=released)
    with pytest.raises(ConnectionResetError):
        await drain(pipe)
    for _ in range(3):
        with pytest.raises(PipeError) as caught:
            await pull(pipe)
        assert caught.value.__cause__ is error
        assert pipe.state == "errored"
    assert len(released.calls) == 1


async def test_an_errored_pipe_never_ends_cleanly(impl: ModuleType) -> None:
    pipe = impl.Pipe(ScriptedSource([OSError("broken")]))
    with pytest.raises(OSError):
        await pull(pipe)
    # A consumer that comes back with `async for` must not see an empty, clean body.
    with pytest.raises(PipeError):
        async for _chunk in pipe:
            pass


@pytest.mark.parametrize("bad_chunk", ["text", 42, None, [b"a"]], ids=["str", "int", "none", "list"])
async def test_non_bytes_chunk_raises_type_error_and_errors_the_pipe(impl: ModuleType, bad_chunk: Any) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe(BareSource([b"ok", bad_chunk]), owner, on_release=released)
    del owner
    assert await pull(pipe) == b"ok"
    with pytest.raises(TypeError, match="bytes-like"):
        await pull(pipe)
    assert pipe.state == "errored"
    assert isinstance(pipe.exception, TypeError)
    assert (pipe.chunks, pipe.nbytes) == (1, 2)
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("errored", True)]
    with pytest.raises(PipeError) as caught:
        await pull(pipe)
    assert caught.value.__cause__ is pipe.exception
