"""Play a schedule of consumer, producer and source actions against one Pipe implementation; record a trace.

A trace lists everything an outside observer can see, in order: what each pull returned or raised, what
the source was asked to do, every on_release call, and after each step the pipe's state, counters and
whether the owner is still alive. Two implementations that honour one contract produce equal traces.

Scheduling is deterministic: stalled reads wait on futures that only a "release" step resolves, and
every step is followed by a fixed number of ``sleep(0)`` rounds, never by wall-clock time.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from dataclasses import dataclass
from types import ModuleType
from typing import Any

SETTLE_ROUNDS = 12

# -- plans --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Read:
    """What one source read produces: a chunk, the end, an error or a non-bytes chunk; maybe after a stall."""

    kind: str  # "chunk", "end", "error", "bad"
    chunk_type: str = "bytes"  # "bytes", "bytearray", "memoryview"
    size: int = 0
    stalls: bool = False


@dataclass(frozen=True)
class PullPlan:
    reads: tuple[Read, ...]
    steps: tuple[str, ...]  # "pull", "release", "aclose", "cancel", "cancel_task", "tick"
    closable: bool  # whether source and iterator have aclose()


@dataclass(frozen=True)
class PushPlan:
    steps: tuple[tuple[str, int], ...]  # (action, argument)
    high_water: int
    low_water: int | None
    with_producer: bool


Trace = list[tuple[Any, ...]]


def make_chunk(chunk_type: str, size: int, seed: int) -> Any:
    data = bytes((seed * 7 + index) % 256 for index in range(size))
    if chunk_type == "bytearray":
        return bytearray(data)
    if chunk_type == "memoryview":
        return memoryview(data)
    return data


def describe_exception(exc: BaseException) -> tuple[Any, ...]:
    cause = exc.__cause__
    return (type(exc).__name__, str(exc), None if cause is None else (type(cause).__name__, str(cause)))


class _Owner:
    pass


# -- the pull face ----------------------------------------------------------------------------------------


class _ProgrammedSource:
    """Plays the planned reads; records aiter/anext/aclose into the trace."""

    def __init__(self, reads: tuple[Read, ...], trace: Trace) -> None:
        self.reads = reads
        self.trace = trace
        self.position = 0
        self.chunks: dict[int, Any] = {}
        self.stalled: deque[tuple[int, asyncio.Future[None]]] = deque()

    def __aiter__(self) -> _ProgrammedSource:
        self.trace.append(("source.aiter",))
        return self

    async def __anext__(self) -> Any:
        index = self.position
        self.position += 1
        self.trace.append(("source.anext", index))
        if index >= len(self.reads):
            raise StopAsyncIteration
        read = self.reads[index]
        if read.stalls:
            waiter = asyncio.get_running_loop().create_future()
            self.stalled.append((index, waiter))
            await waiter
        if read.kind == "end":
            raise StopAsyncIteration
        if read.kind == "error":
            raise ValueError(f"read {index} failed")
        if read.kind == "bad":
            return f"text {index}"
        chunk = make_chunk(read.chunk_type, read.size, index)
        self.chunks[index] = chunk
        return chunk

    def release_oldest(self) -> None:
        while self.stalled:
            index, waiter = self.stalled.popleft()
            if not waiter.done():
                self.trace.append(("source.released", index))
                waiter.set_result(None)
                return


class _ClosableProgrammedSource(_ProgrammedSource):
    async def aclose(self) -> None:
        self.trace.append(("source.aclose", "started", self.position))
        await asyncio.sleep(0)
        self.trace.append(("source.aclose", "finished"))


async def _settle() -> None:
    for _ in range(SETTLE_ROUNDS):
        await asyncio.sleep(0)


def _install_error_recorder(trace: Trace) -> None:
    def record(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        trace.append(("loop.error", None if exc is None else describe_exception(exc)))

    asyncio.get_running_loop().set_exception_handler(record)


async def _play_pull(impl: ModuleType, plan: PullPlan) -> Trace:
    trace: Trace = []
    _install_error_recorder(trace)
    source_type = _ClosableProgrammedSource if plan.closable else _ProgrammedSource
    source = source_type(plan.reads, trace)
    owner = _Owner()
    owner_ref = weakref.ref(owner)

    def on_release(pipe: Any) -> None:
        trace.append(("release", pipe.state, pipe.owner is None, owner_ref() is None))

    pipe = impl.Pipe(source, owner, on_release=on_release)
    del owner
    tasks: list[asyncio.Task[None]] = []

    async def pull(number: int) -> None:
        try:
            chunk = await pipe.__anext__()
        except BaseException as exc:
            trace.append(("pull.raised", number, *describe_exception(exc)))
            raise
        index = source.position - 1
        trace.append(("pull.got", number, type(chunk).__name__, bytes(chunk), chunk is source.chunks.get(index)))

    def observe(step: str) -> None:
        trace.append((step, pipe.state, pipe.chunks, pipe.nbytes, pipe.owner is None, owner_ref() is None))

    for step in plan.steps:
        trace.append(("step", step))
        if step == "pull":
            tasks.append(asyncio.ensure_future(pull(len(tasks))))
        elif step == "release":
            source.release_oldest()
        elif step == "aclose":
            await pipe.aclose()
        elif step == "cancel":
            pipe.cancel()
        elif step == "cancel_task":
            pending = [task for task in tasks if not task.done()]
            if pending:
                pending[-1].cancel()
        await _settle()
        observe("after")

    # Finish the way a server would when the client goes away, and let every pending read come back.
    trace.append(("step", "finish"))
    await pipe.aclose()
    for _ in range(len(plan.reads) + 2):
        source.release_oldest()
        await _settle()
    observe("finished")
    for task in tasks:
        assert task.done(), "a pull was still pending after the finish"
        if not task.cancelled():
            task.exception()  # retrieved: every outcome is in the trace already
    return trace


# -- the push face ----------------------------------------------------------------------------------------


class _Producer:
    def __init__(self, trace: Trace) -> None:
        self.trace = trace

    def pause_reading(self) -> None:
        self.trace.append(("producer.pause",))

    def resume_reading(self) -> None:
        self.trace.append(("producer.resume",))


class _Sink:
    def __init__(self, trace: Trace, number: int) -> None:
        self.trace = trace
        self.number = number

    def write(self, chunk: Any) -> None:
        self.trace.append(("sink.write", self.number, type(chunk).__name__, bytes(chunk)))

    def end(self, pipe: Any) -> None:
        exc = pipe.exception
        self.trace.append(
            (
                "sink.end",
                self.number,
                pipe.state,
                None if exc is None else describe_exception(exc),
                pipe.owner is None,
            )
        )


async def _play_push(impl: ModuleType, plan: PushPlan) -> Trace:
    trace: Trace = []
    _install_error_recorder(trace)
    owner = _Owner()
    owner_ref = weakref.ref(owner)

    def on_release(pipe: Any) -> None:
        trace.append(("release", pipe.state, pipe.owner is None, owner_ref() is None))

    producer = _Producer(trace) if plan.with_producer else None
    pipe = impl.Pipe.pushed(
        owner, producer=producer, on_release=on_release, high_water=plan.high_water, low_water=plan.low_water
    )
    del owner
    tasks: list[asyncio.Task[None]] = []
    fed: list[Any] = []

    async def pull(number: int) -> None:
        try:
            chunk = await pipe.__anext__()
        except BaseException as exc:
            trace.append(("pull.raised", number, *describe_exception(exc)))
            raise
        trace.append(("pull.got", number, type(chunk).__name__, bytes(chunk), any(chunk is c for c in fed)))

    def call(name: str, *args: Any) -> None:
        try:
            result = getattr(pipe, name)(*args)
        except Exception as exc:
            trace.append(("call.raised", name, *describe_exception(exc)))
        else:
            trace.append(("call.returned", name, result))

    for number, (step, argument) in enumerate(plan.steps):
        trace.append(("step", step, argument))
        if step == "feed":
            chunk = make_chunk(("bytes", "bytearray", "memoryview")[argument % 3], argument, number)
            fed.append(chunk)
            call("feed", chunk)
        elif step == "feed_bad":
            call("feed", f"text {number}")
        elif step == "feed_eof":
            call("feed_eof")
        elif step == "feed_error":
            call("feed_error", ConnectionResetError(f"upstream reset {number}"))
        elif step == "connect":
            call("connect", _Sink(trace, number))
        elif step in ("pause_producing", "resume_producing", "cancel"):
            call(step)
        elif step == "aclose":
            await pipe.aclose()
        elif step == "pull":
            tasks.append(asyncio.ensure_future(pull(len(tasks))))
        elif step == "cancel_task":
            pending = [task for task in tasks if not task.done()]
            if pending:
                pending[-1].cancel()
        await _settle()
        trace.append(
            ("after", pipe.state, pipe.chunks, pipe.nbytes, pipe.paused, pipe.owner is None, owner_ref() is None)
        )

    trace.append(("step", "finish"))
    await pipe.aclose()
    await _settle()
    trace.append(("finished", pipe.state, pipe.owner is None, owner_ref() is None))
    for task in tasks:
        assert task.done(), "a pull was still pending after the finish"
        if not task.cancelled():
            task.exception()
    return trace


# -- running ------------------------------------------------------------------------------------------------


def play(impl: ModuleType, plan: PullPlan | PushPlan) -> Trace:
    """Run one plan on a fresh event loop and return its trace."""
    loop = asyncio.new_event_loop()
    try:
        if isinstance(plan, PullPlan):
            return loop.run_until_complete(_play_pull(impl, plan))
        return loop.run_until_complete(_play_push(impl, plan))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
