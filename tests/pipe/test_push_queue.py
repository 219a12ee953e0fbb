"""Push face consumed with `async for`: order and identity kept, errors after queued chunks, never a clean
end after feed_error, the owner held until the consumer reaches the end."""

from __future__ import annotations

import asyncio
import gc
import weakref
from types import ModuleType
from typing import Any

import pytest

from fastpipe import PipeError

from ._support import Owner, ReleaseRecorder, drain, pull, settle, unique_chunks


async def test_fed_chunks_arrive_in_order_as_the_same_objects(impl: ModuleType) -> None:
    chunks: list[Any] = [*unique_chunks(3), bytearray(b"mutable"), memoryview(b"view")]
    pipe = impl.Pipe.pushed(Owner())
    assert pipe.state == "idle"
    for chunk in chunks[:2]:
        assert pipe.feed(chunk) is True
    assert pipe.state == "open"
    received: list[Any] = []

    async def consume() -> None:
        async for chunk in pipe:
            received.append(chunk)

    task = asyncio.ensure_future(consume())
    await settle()
    assert received == chunks[:2]
    for chunk in chunks[2:]:
        pipe.feed(chunk)
        await settle(2)
    pipe.feed_eof()
    await task
    assert len(received) == len(chunks)
    assert all(got is sent for got, sent in zip(received, chunks, strict=True))
    assert (pipe.chunks, pipe.nbytes) == (len(chunks), sum(len(bytes(chunk)) for chunk in chunks))
    assert pipe.state == "closed"


async def test_waiting_consumer_is_woken_by_feed(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())
    task = asyncio.ensure_future(pull(pipe))
    await settle()
    assert not task.done()
    assert pipe.state == "open"
    pipe.feed(b"wake")
    assert await task == b"wake"
    pipe.feed_eof()
    assert await drain(pipe) == []


async def test_owner_is_held_until_the_consumer_reaches_the_fed_eof(impl: ModuleType) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe.pushed(owner, on_release=released)
    del owner
    pipe.feed(b"a")
    pipe.feed(b"b")
    pipe.feed_eof()
    gc.collect()
    # EOF is queued behind two chunks nobody read yet: the stream is not over.
    assert owner_ref() is not None
    assert released.calls == []
    assert await pull(pipe) == b"a"
    assert await pull(pipe) == b"b"
    assert owner_ref() is not None
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("closed", True)]
    assert released.calls[0].task is asyncio.current_task()
    with pytest.raises(StopAsyncIteration):
        await pull(pipe)


async def test_fed_error_arrives_after_the_queued_chunks(impl: ModuleType) -> None:
    error = ConnectionResetError("upstream reset")
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe.pushed(owner, on_release=released)
    del owner
    pipe.feed(b"a")
    pipe.feed(b"b")
    pipe.feed_error(error)
    received: list[Any] = []
    with pytest.raises(ConnectionResetError) as caught:
        async for chunk in pipe:
            received.append(chunk)
    assert caught.value is error
    assert received == [b"a", b"b"]
    assert pipe.state == "errored"
    assert pipe.exception is error
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("errored", True)]


async def test_a_fed_error_never_ends_cleanly(impl: ModuleType) -> None:
    error = ValueError("bad upstream framing")
    pipe = impl.Pipe.pushed(Owner())
    pipe.feed_error(error)
    with pytest.raises(ValueError):
        await drain(pipe)
    for _ in range(2):
        with pytest.raises(PipeError) as caught:
            await drain(pipe)
        assert caught.value.__cause__ is error


async def test_fed_error_wakes_a_waiting_consumer(impl: ModuleType) -> None:
    error = ConnectionResetError("reset while waiting")
    pipe = impl.Pipe.pushed(Owner())
    task = asyncio.ensure_future(drain(pipe))
    await settle()
    pipe.feed_error(error)
    with pytest.raises(ConnectionResetError) as caught:
        await task
    assert caught.value is error


@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_cancel_from_another_task_ends_a_waiting_consumer_and_drops_the_queue(impl: ModuleType, how: str) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe.pushed(owner, on_release=released)
    del owner
    pipe.feed(b"a")
    assert await pull(pipe) == b"a"
    task = asyncio.ensure_future(drain(pipe))
    await settle()
    if how == "aclose":
        await pipe.aclose()
    else:
        pipe.cancel()
    assert pipe.state == "cancelled"
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
    assert await task == []
    assert pipe.feed(b"late") is False
    assert pipe.chunks == 1


async def test_cancel_drops_chunks_queued_for_nobody(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())
    pipe.feed(b"a")
    pipe.feed(b"b")
    pipe.cancel()
    assert await drain(pipe) == []
    assert (pipe.chunks, pipe.state) == (0, "cancelled")


async def test_consumer_task_cancelled_while_waiting_cancels_the_pipe(impl: ModuleType) -> None:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    released = ReleaseRecorder()
    pipe = impl.Pipe.pushed(owner, on_release=released)
    del owner
    seen: list[BaseException] = []

    async def consume() -> None:
        try:
            await drain(pipe)
        except asyncio.CancelledError as exc:
            seen.append(exc)
            raise

    task = asyncio.ensure_future(consume())
    await settle()
    task.cancel("client went away")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    # What reached the consumer through the pipe is the cancellation the task got, message and all.
    assert [exc.args for exc in seen] == [("client went away",)]
    assert pipe.state == "cancelled"
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
    assert pipe.feed(b"late") is False
    pipe.feed_eof()
    pipe.feed_error(ValueError("ignored after cancel"))
    assert pipe.state == "cancelled"
    assert len(released.calls) == 1
