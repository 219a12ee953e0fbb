"""Every way a pipe can finish, as small coroutines shared by the release, refcount and leak tests.

Each ending builds a pipe around the given owner and chunks, drives it to its end the way a real consumer
or producer would, and returns the finished pipe. ``final_state`` is what the contract says it must be.
Each ending deletes its ``owner`` name right after building the pipe, so that (as in a real gateway) only
the pipe holds it, and no frame kept by a traceback does. ``chunks`` needs at least two items.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Awaitable, Callable, Sequence, Union

from ._support import END, BareSource, RecordingSink, ScriptedSource, Stall, drain, pull

OnRelease = Union[Callable[[Any], object], None]
Run = Callable[[ModuleType, object, Sequence[Any], OnRelease], Awaitable[Any]]


@dataclass(frozen=True)
class Ending:
    name: str
    final_state: str
    run: Run

    def __repr__(self) -> str:
        return self.name


async def _outcome(task: asyncio.Task[Any]) -> str:
    """How a task ended, learned without raising its exception into the caller's frame.

    Re-raising would put that frame (and every chunk it names) into a traceback that a finished task
    keeps in fields CPython 3.11's collector cannot see: a leak of the test, not of the pipe. Callers
    also drop their own name for the task once it is done.
    """
    await asyncio.wait([task])
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return "returned" if error is None else type(error).__name__


async def _eof(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe(BareSource(chunks), owner, on_release=on_release)
    del owner
    await drain(pipe)
    return pipe


async def _error(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe(ScriptedSource([*chunks, ValueError("upstream reset")]), owner, on_release=on_release)
    del owner
    try:
        await drain(pipe)
    except ValueError:
        pass
    else:
        raise AssertionError("the source's error did not propagate")
    return pipe


async def _bad_chunk(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe(BareSource([*chunks, "not bytes"]), owner, on_release=on_release)
    del owner
    try:
        await drain(pipe)
    except TypeError:
        pass
    else:
        raise AssertionError("a str chunk was passed on")
    return pipe


async def _aclose_before_pull(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe(ScriptedSource(chunks), owner, on_release=on_release)
    del owner
    await pipe.aclose()
    return pipe


async def _aclose_after_pull(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe(ScriptedSource(chunks), owner, on_release=on_release)
    del owner
    await pull(pipe)
    await pipe.aclose()
    return pipe


async def _cancel_before_pull(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe(ScriptedSource(chunks), owner, on_release=on_release)
    del owner
    pipe.cancel()
    return pipe


async def _cancel_after_pull(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe(ScriptedSource(chunks), owner, on_release=on_release)
    del owner
    await pull(pipe)
    pipe.cancel()
    return pipe


async def _context_manager_exit(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    async with impl.Pipe(ScriptedSource(chunks), owner, on_release=on_release) as pipe:
        del owner
        await pull(pipe)
    return pipe


async def _consumer_cancelled(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    stall = Stall()
    pipe = impl.Pipe(ScriptedSource([*chunks, stall]), owner, on_release=on_release)
    del owner
    for _ in chunks:
        await pull(pipe)
    task = asyncio.ensure_future(pull(pipe))
    await stall.reached()
    task.cancel()
    assert await _outcome(task) == "cancelled"
    del task
    return pipe


async def _closed_during_pending_pull(
    impl: ModuleType, chunks: Sequence[Any], pipe: Any, stall: Stall, close: Callable[[], Awaitable[None]]
) -> Any:
    for _ in chunks[:-1]:
        await pull(pipe)
    task = asyncio.ensure_future(pull(pipe))
    await stall.reached()
    await close()
    stall.resolve(chunks[-1])
    assert await _outcome(task) == "StopAsyncIteration", "a chunk read after cancellation was delivered"
    del task
    return pipe


async def _aclose_during_pending_pull(
    impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease
) -> Any:
    stall = Stall()
    pipe = impl.Pipe(ScriptedSource([*chunks[:-1], stall]), owner, on_release=on_release)
    del owner
    return await _closed_during_pending_pull(impl, chunks, pipe, stall, pipe.aclose)


async def _cancel_during_pending_pull(
    impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease
) -> Any:
    stall = Stall()
    pipe = impl.Pipe(ScriptedSource([*chunks[:-1], stall]), owner, on_release=on_release)
    del owner

    async def cancel() -> None:
        pipe.cancel()

    return await _closed_during_pending_pull(impl, chunks, pipe, stall, cancel)


async def _push_eof(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe.pushed(owner, on_release=on_release)
    del owner
    for chunk in chunks:
        pipe.feed(chunk)
    pipe.feed_eof()
    await drain(pipe)
    return pipe


async def _push_error(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe.pushed(owner, on_release=on_release)
    del owner
    for chunk in chunks:
        pipe.feed(chunk)
    pipe.feed_error(ConnectionResetError("upstream reset"))
    try:
        await drain(pipe)
    except ConnectionResetError:
        pass
    else:
        raise AssertionError("the fed error did not propagate")
    return pipe


async def _push_cancel(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe.pushed(owner, on_release=on_release)
    del owner
    for chunk in chunks:
        pipe.feed(chunk)
    await pull(pipe)
    pipe.cancel()
    return pipe


async def _push_aclose(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    pipe = impl.Pipe.pushed(owner, on_release=on_release)
    del owner
    for chunk in chunks:
        pipe.feed(chunk)
    await pipe.aclose()
    return pipe


async def _push_consumer_cancelled(
    impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease
) -> Any:
    pipe = impl.Pipe.pushed(owner, on_release=on_release)
    del owner
    task = asyncio.ensure_future(drain(pipe))
    await asyncio.sleep(0)
    for chunk in chunks:
        pipe.feed(chunk)
    await asyncio.sleep(0)
    task.cancel()
    assert await _outcome(task) == "cancelled"
    del task
    return pipe


async def _push_sink(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease, end: Any) -> Any:
    pipe = impl.Pipe.pushed(owner, on_release=on_release)
    del owner
    pipe.feed(chunks[0])  # queued before the sink arrives
    pipe.connect(RecordingSink())
    for chunk in chunks[1:]:
        pipe.feed(chunk)
    if end is END:
        pipe.feed_eof()
    elif end is None:
        pipe.cancel()
    else:
        pipe.feed_error(end)
    return pipe


async def _push_sink_eof(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    return await _push_sink(impl, owner, chunks, on_release, END)


async def _push_sink_error(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    return await _push_sink(impl, owner, chunks, on_release, ConnectionResetError("upstream reset"))


async def _push_sink_cancel(impl: ModuleType, owner: object, chunks: Sequence[Any], on_release: OnRelease) -> Any:
    return await _push_sink(impl, owner, chunks, on_release, None)


ENDINGS: tuple[Ending, ...] = (
    Ending("eof", "closed", _eof),
    Ending("error", "errored", _error),
    Ending("bad_chunk", "errored", _bad_chunk),
    Ending("aclose_before_pull", "cancelled", _aclose_before_pull),
    Ending("aclose_after_pull", "cancelled", _aclose_after_pull),
    Ending("cancel_before_pull", "cancelled", _cancel_before_pull),
    Ending("cancel_after_pull", "cancelled", _cancel_after_pull),
    Ending("context_manager_exit", "cancelled", _context_manager_exit),
    Ending("consumer_cancelled", "cancelled", _consumer_cancelled),
    Ending("aclose_during_pending_pull", "cancelled", _aclose_during_pending_pull),
    Ending("cancel_during_pending_pull", "cancelled", _cancel_during_pending_pull),
    Ending("push_eof", "closed", _push_eof),
    Ending("push_error", "errored", _push_error),
    Ending("push_cancel", "cancelled", _push_cancel),
    Ending("push_aclose", "cancelled", _push_aclose),
    Ending("push_consumer_cancelled", "cancelled", _push_consumer_cancelled),
    Ending("push_sink_eof", "closed", _push_sink_eof),
    Ending("push_sink_error", "errored", _push_sink_error),
    Ending("push_sink_cancel", "cancelled", _push_sink_cancel),
)
