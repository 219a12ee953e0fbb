"""Cancellation while a pull is pending: from another task (aclose/cancel) or of the consumer task itself."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

from ._support import END, Owner, ReleaseRecorder, ScriptedSource, Stall, drain, loop_errors, pull

LATE_OUTCOMES: dict[str, Any] = {
    "chunk": lambda: b"late chunk",
    "eof": lambda: END,
    "error": lambda: ConnectionResetError("late error"),
}


@dataclass
class _PendingPull:
    """A pipe with one chunk read and a second pull waiting at the stall, in its own task."""

    pipe: Any
    task: asyncio.Task[Any]
    owner_ref: weakref.ref[Owner]
    source: ScriptedSource


async def _pending_pull(impl: ModuleType, stall: Stall, released: ReleaseRecorder) -> _PendingPull:
    owner = Owner()
    owner_ref = weakref.ref(owner)
    source = ScriptedSource([b"first", stall, b"never read"])
    pipe = impl.Pipe(source, owner, on_release=released)
    del owner
    assert await pull(pipe) == b"first"
    task = asyncio.ensure_future(pull(pipe))
    await stall.reached()
    return _PendingPull(pipe, task, owner_ref, source)


@pytest.mark.parametrize("late", sorted(LATE_OUTCOMES))
@pytest.mark.parametrize("how", ["aclose", "cancel"])
async def test_cancel_during_pending_pull_discards_what_the_read_brings(impl: ModuleType, late: str, how: str) -> None:
    stall = Stall()
    released = ReleaseRecorder()
    pending = await _pending_pull(impl, stall, released)
    pipe, task, owner_ref, source = pending.pipe, pending.task, pending.owner_ref, pending.source
    with loop_errors() as errors:
        if how == "aclose":
            await pipe.aclose()  # returns without waiting for the pending read
        else:
            pipe.cancel()
        assert stall.pending
        assert not task.done()
        assert pipe.state == "cancelled"
        # The read is still in flight: the owner must outlive it.
        assert owner_ref() is not None
        assert released.calls == []

        stall.resolve(LATE_OUTCOMES[late]())
        with pytest.raises(StopAsyncIteration):
            await task
        assert pipe.state == "cancelled"
        assert pipe.exception is None
        assert owner_ref() is None
        assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
        # The pending pull itself finished the cancellation: it released from the consumer's task.
        assert released.calls[0].task is task
        assert (pipe.chunks, pipe.nbytes) == (1, 5)
        assert source.anext_calls == 2
        # Whatever the read brought, the pull that finishes the cancellation closes the iterator.
        assert source.iterator_aclose_finished == 1
        assert await drain(pipe) == []
        await pipe.aclose()
        assert pipe.state == "cancelled"
    assert errors == []
    assert len(released.calls) == 1


async def test_aclose_during_pending_pull_returns_before_the_read_completes(impl: ModuleType) -> None:
    stall = Stall()
    released = ReleaseRecorder()
    pending = await _pending_pull(impl, stall, released)
    pipe, task = pending.pipe, pending.task
    closer = asyncio.ensure_future(pipe.aclose())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert closer.done()
    assert not task.done()
    await closer
    stall.resolve(b"late")
    with pytest.raises(StopAsyncIteration):
        await task


async def test_consumer_task_cancelled_mid_pull_propagates_cancelled_error_unchanged(
    impl: ModuleType,
) -> None:
    stall = Stall()
    released = ReleaseRecorder()
    owner = Owner()
    owner_ref = weakref.ref(owner)
    pipe = impl.Pipe(ScriptedSource([b"first", stall]), owner, on_release=released)
    del owner
    seen: list[BaseException] = []

    async def consume() -> None:
        try:
            async for _chunk in pipe:
                pass
        except asyncio.CancelledError as exc:
            seen.append(exc)
            raise

    task = asyncio.ensure_future(consume())
    await stall.reached()
    task.cancel("client went away")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    (consumer_saw,) = seen
    assert consumer_saw is stall.cancelled_with
    assert consumer_saw.args == ("client went away",)
    assert pipe.state == "cancelled"
    assert owner_ref() is None
    assert [(call.state, call.owner_was_none) for call in released.calls] == [("cancelled", True)]
    assert released.calls[0].task is task
    assert await drain(pipe) == []
    await pipe.aclose()
    assert len(released.calls) == 1


async def test_consumer_task_cancelled_before_its_first_pull_runs(impl: ModuleType) -> None:
    source = ScriptedSource([b"a"])
    pipe = impl.Pipe(source, Owner())
    task = asyncio.ensure_future(drain(pipe))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The pull never started: the pipe is untouched and still usable.
    assert pipe.state == "idle"
    assert source.aiter_calls == 0
    await pipe.aclose()
    assert pipe.state == "cancelled"
