"""tap(fn): a synchronous observer that sees every chunk object before the consumer does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
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
    # Reported once, then detached: it is not called for b"b" and b"c" (it used to be, and reported each time).
    assert [context.get("exception") for context in errors] == [failure]
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


# -- an observer that raises is detached ---------------------------------------------------------------
#
# The contract (issue #11): an observer that raises is reported once, with its traceback, to the loop's
# exception handler and detached: it sees no later chunk. The other observers and the stream go on
# unchanged: same chunk objects, same counters. Each test runs on the three ways a pipe is consumed.

KINDS = ("pulled", "pushed", "connected")


def _make(impl: ModuleType, kind: str, chunks: list[bytes]) -> tuple[Any, Callable[[], Awaitable[list[Any]]]]:
    """A pipe that will carry ``chunks``, and ``run()``: stream them all, return what the consumer got.

    ``pulled``: a source read by ``async for``. ``pushed``: ``Pipe.pushed`` fed, then read by ``async for``.
    ``connected``: ``Pipe.pushed`` connected to a sink, then fed (each chunk is written through at once).
    Taps go on the pipe between the two calls.
    """
    if kind == "pulled":
        pipe = impl.Pipe(BareSource(chunks), Owner())

        async def run() -> list[Any]:
            return await drain(pipe)

    elif kind == "pushed":
        pipe = impl.Pipe.pushed(Owner())

        async def run() -> list[Any]:
            for chunk in chunks:
                pipe.feed(chunk)
            pipe.feed_eof()
            return await drain(pipe)

    else:
        pipe = impl.Pipe.pushed(Owner())
        sink = RecordingSink()

        async def run() -> list[Any]:
            pipe.connect(sink)
            for chunk in chunks:
                pipe.feed(chunk)
            pipe.feed_eof()
            return sink.chunks

    return pipe, run


def _same_objects(got: list[Any], expected: list[Any]) -> bool:
    return len(got) == len(expected) and all(a is b for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("kind", KINDS)
async def test_raising_tap_is_detached_and_sees_no_later_chunk(impl: ModuleType, kind: str) -> None:
    chunks = unique_chunks(4)
    failure = ZeroDivisionError("tap bug")
    seen: list[Any] = []

    def broken(chunk: Any) -> None:
        seen.append(chunk)
        if len(seen) == 2:
            raise failure

    pipe, run = _make(impl, kind, chunks)
    pipe.tap(broken)
    with loop_errors() as errors:
        delivered = await run()
    assert _same_objects(seen, chunks[:2])
    assert [(context.get("exception"), context.get("pipe")) for context in errors] == [(failure, pipe)]
    # The stream itself is untouched: the same objects, all of them, counted as always.
    assert _same_objects(delivered, chunks)
    assert (pipe.state, pipe.chunks, pipe.nbytes) == ("closed", 4, sum(len(chunk) for chunk in chunks))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("raiser", [0, 1, 2], ids=["first", "middle", "last"])
async def test_the_observers_around_a_detached_one_see_every_chunk(impl: ModuleType, kind: str, raiser: int) -> None:
    # Detaching while the observers of a chunk are being called must not skip the next one.
    chunks = unique_chunks(3)
    failure = ValueError("observer bug")
    calls: list[tuple[int, Any]] = []

    def observer(index: int) -> Callable[[Any], None]:
        def observe(chunk: Any) -> None:
            calls.append((index, chunk))
            if index == raiser:
                raise failure

        return observe

    pipe, run = _make(impl, kind, chunks)
    for index in range(3):
        pipe.tap(observer(index))
    with loop_errors() as errors:
        delivered = await run()
    expected = [(index, chunks[0]) for index in range(3)]
    expected += [(index, chunk) for chunk in chunks[1:] for index in range(3) if index != raiser]
    assert [index for index, _ in calls] == [index for index, _ in expected]
    assert all(got is want for (_, got), (_, want) in zip(calls, expected, strict=True))
    assert [context.get("exception") for context in errors] == [failure]
    assert _same_objects(delivered, chunks)
    assert pipe.chunks == 3


@pytest.mark.parametrize("kind", KINDS)
async def test_detached_tap_is_reported_once_with_its_traceback(impl: ModuleType, kind: str) -> None:
    def explode() -> None:
        raise LookupError("deep in the observer")

    def broken(chunk: Any) -> None:
        explode()

    pipe, run = _make(impl, kind, unique_chunks(3))
    pipe.tap(broken)
    with loop_errors() as errors:
        await run()
    assert len(errors) == 1
    (context,) = errors
    assert "detached" in context["message"]
    exc = context["exception"]
    assert isinstance(exc, LookupError)
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    # From the observer down to where it raised.
    assert frames[-2:] == ["broken", "explode"]


@pytest.mark.parametrize("kind", KINDS)
async def test_tap_added_from_inside_an_observer_starts_with_the_next_chunk(impl: ModuleType, kind: str) -> None:
    # The observers of a chunk are those attached when it arrived; one added meanwhile (from inside an
    # observer) sees the chunks after it, after the observers that were already there.
    chunks = unique_chunks(3)
    calls: list[tuple[str, Any]] = []
    pipe, run = _make(impl, kind, chunks)

    def adder(chunk: Any) -> None:
        calls.append(("adder", chunk))
        if len(calls) == 1:
            pipe.tap(lambda chunk: calls.append(("late", chunk)))

    pipe.tap(adder)
    with loop_errors() as errors:
        delivered = await run()
    assert [name for name, _ in calls] == ["adder", "adder", "late", "adder", "late"]
    assert _same_objects([chunk for _, chunk in calls], [chunks[0], chunks[1], chunks[1], chunks[2], chunks[2]])
    assert errors == []
    assert _same_objects(delivered, chunks)


@pytest.mark.parametrize("kind", KINDS)
async def test_tap_added_by_an_observer_that_then_raises_stays(impl: ModuleType, kind: str) -> None:
    # Detaching the raiser keeps what it attached before raising.
    chunks = unique_chunks(3)
    late: list[Any] = []
    failure = RuntimeError("added a tap, then broke")
    pipe, run = _make(impl, kind, chunks)

    def adder(chunk: Any) -> None:
        pipe.tap(late.append)
        raise failure

    pipe.tap(adder)
    with loop_errors() as errors:
        await run()
    assert _same_objects(late, chunks[1:])
    assert [context.get("exception") for context in errors] == [failure]


@pytest.mark.parametrize("kind", KINDS)
async def test_same_observer_tapped_twice_is_detached_as_one(impl: ModuleType, kind: str) -> None:
    # Tapped twice, an observer is called twice per chunk; once it raises, both are detached at once: it is
    # not called again, not even at its second place for the chunk it failed on, and reported once.
    chunks = unique_chunks(3)
    failure = KeyError("twice")
    calls: list[tuple[str, Any]] = []

    def twice(chunk: Any) -> None:
        calls.append(("twice", chunk))
        if chunk is chunks[1]:
            raise failure

    pipe, run = _make(impl, kind, chunks)
    pipe.tap(twice).tap(lambda chunk: calls.append(("other", chunk))).tap(twice)
    with loop_errors() as errors:
        delivered = await run()
    assert calls == [
        ("twice", chunks[0]), ("other", chunks[0]), ("twice", chunks[0]),
        ("twice", chunks[1]), ("other", chunks[1]),
        ("other", chunks[2]),
    ]  # fmt: skip
    assert [context.get("exception") for context in errors] == [failure]
    assert _same_objects(delivered, chunks)


@pytest.mark.parametrize("kind", KINDS)
async def test_every_observer_detached_leaves_the_stream_as_it_was(impl: ModuleType, kind: str) -> None:
    chunks = unique_chunks(4)
    failures = [OSError("first"), OSError("second")]
    calls: list[int] = []

    def broken(index: int) -> Callable[[Any], None]:
        def observe(chunk: Any) -> None:
            calls.append(index)
            raise failures[index]

        return observe

    pipe, run = _make(impl, kind, chunks)
    pipe.tap(broken(0)).tap(broken(1))
    with loop_errors() as errors:
        delivered = await run()
    assert calls == [0, 1]
    assert [context.get("exception") for context in errors] == failures
    assert _same_objects(delivered, chunks)
    assert (pipe.state, pipe.chunks, pipe.nbytes) == ("closed", 4, sum(len(chunk) for chunk in chunks))


async def test_observer_detached_during_a_nested_feed_is_not_called_for_the_outer_chunk(impl: ModuleType) -> None:
    # An observer of a connected pipe may feed it: that chunk is written through at once, while the outer
    # chunk's observers are still being called. One detached in there is not called for the outer chunk.
    outer, inner = unique_chunks(2)
    failure = ArithmeticError("nested")
    victim_saw: list[Any] = []
    pipe = impl.Pipe.pushed(Owner())
    sink = RecordingSink()

    def feeder(chunk: Any) -> None:
        if chunk is outer:
            pipe.feed(inner)

    def victim(chunk: Any) -> None:
        victim_saw.append(chunk)
        raise failure

    pipe.tap(feeder).tap(victim)
    pipe.connect(sink)
    with loop_errors() as errors:
        pipe.feed(outer)
        pipe.feed_eof()
    assert _same_objects(victim_saw, [inner])
    assert [context.get("exception") for context in errors] == [failure]
    assert sorted(map(id, sink.chunks)) == sorted(map(id, [outer, inner]))
    assert (pipe.state, pipe.chunks) == ("closed", 2)


@pytest.mark.parametrize("kind", KINDS)
async def test_observers_after_one_that_finished_the_pipe_still_see_that_chunk(impl: ModuleType, kind: str) -> None:
    # An observer that cancels the pipe (and raises) does not take the chunk away from the observers
    # after it: that chunk is still passed on. It is the last one.
    chunks = unique_chunks(3)
    failure = RuntimeError("cancelled, then broke")
    calls: list[tuple[str, Any]] = []
    pipe, run = _make(impl, kind, chunks)

    def canceller(chunk: Any) -> None:
        calls.append(("canceller", chunk))
        pipe.cancel()
        raise failure

    pipe.tap(canceller).tap(lambda chunk: calls.append(("after", chunk)))
    with loop_errors() as errors:
        await run()
    assert calls == [("canceller", chunks[0]), ("after", chunks[0])]
    assert [context.get("exception") for context in errors] == [failure]
    assert (pipe.state, pipe.chunks) == ("cancelled", 1)
