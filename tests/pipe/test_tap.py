"""tap(fn): a synchronous observer that sees every chunk object before the consumer does."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest

from ._support import BareSource, Owner, RecordingSink, ScriptedSource, Stall, drain, loop_errors, pull, unique_chunks


async def test_tap_sees_every_chunk_object_before_the_consumer(impl: ModuleType) -> None:
    chunks = unique_chunks(4)
    seen: list[Any] = []
    pipe = impl.Pipe(BareSource(chunks), Owner())
    assert pipe.tap(seen.append) is pipe
    async for chunk in pipe:
        assert seen[-1] is chunk
        assert len(seen) == pipe.chunks
    assert len(seen) == len(chunks)
    assert all(observed is chunk for observed, chunk in zip(seen, chunks, strict=True))


async def test_taps_run_in_the_order_they_were_added(impl: ModuleType) -> None:
    order: list[tuple[str, bytes]] = []
    pipe = impl.Pipe(BareSource([b"a", b"b"]))
    pipe.tap(lambda chunk: order.append(("first", chunk))).tap(lambda chunk: order.append(("second", chunk)))
    await drain(pipe)
    assert order == [("first", b"a"), ("second", b"a"), ("first", b"b"), ("second", b"b")]


async def test_raising_tap_is_reported_and_the_stream_goes_on(impl: ModuleType) -> None:
    failure = ZeroDivisionError("tap bug")
    after: list[bytes] = []

    def broken(chunk: Any) -> None:
        raise failure

    pipe = impl.Pipe(BareSource([b"a", b"b", b"c"]), Owner())
    pipe.tap(broken).tap(after.append)
    with loop_errors() as errors:
        assert await drain(pipe) == [b"a", b"b", b"c"]
    assert pipe.state == "closed"
    assert [context.get("exception") for context in errors] == [failure] * 3
    # One broken observer does not starve the others.
    assert after == [b"a", b"b", b"c"]


@pytest.mark.parametrize("not_callable", [None, 42, b"bytes"], ids=["none", "int", "bytes"])
def test_tap_with_a_non_callable_raises_type_error(impl: ModuleType, not_callable: Any) -> None:
    pipe = impl.Pipe(BareSource([]))
    with pytest.raises(TypeError):
        pipe.tap(not_callable)
    pipe.cancel()


async def test_tap_does_not_see_a_chunk_discarded_by_cancellation(impl: ModuleType) -> None:
    stall = Stall()
    seen: list[Any] = []
    pipe = impl.Pipe(ScriptedSource([b"a", stall]), Owner()).tap(seen.append)
    assert await pull(pipe) == b"a"
    task = asyncio.ensure_future(drain(pipe))
    await stall.reached()
    await pipe.aclose()
    stall.resolve(b"late")
    assert await task == []
    assert seen == [b"a"]


async def test_tap_sees_pushed_chunks_on_both_consumer_kinds(impl: ModuleType) -> None:
    queued_seen: list[Any] = []
    queued = impl.Pipe.pushed(Owner()).tap(queued_seen.append)
    queued.feed(b"a")
    queued.feed(b"b")
    queued.feed_eof()
    assert await drain(queued) == [b"a", b"b"]
    assert queued_seen == [b"a", b"b"]

    sink = RecordingSink()
    sunk_seen: list[Any] = []
    connected = impl.Pipe.pushed(Owner()).tap(sunk_seen.append)
    connected.feed(b"x")
    connected.connect(sink)
    connected.feed(b"y")
    connected.feed_eof()
    assert sunk_seen == sink.chunks == [b"x", b"y"]
