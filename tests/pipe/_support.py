"""Real objects the Pipe tests drive: scripted sources, stalls, owners and recorders.

Nothing here imitates a network peer: these are ordinary async iterables and callbacks whose only extra
is that they remember what was done to them, so a test can state the contract exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence


class _End:
    """Marks the end of a script (the source raises StopAsyncIteration)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Any = _End()


class Owner:
    """What a pipe must keep alive: weak-referenceable, nothing else."""

    def __init__(self, name: str = "owner") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Owner {self.name}>"


class Stall:
    """A point in a script where the source waits until the test decides what the read returns."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[Any] | None = None
        self._reached = asyncio.Event()
        self.cancelled_with: BaseException | None = None

    @property
    def pending(self) -> bool:
        """Whether a read is waiting here right now."""
        return self._waiter is not None and not self._waiter.done()

    async def reached(self) -> None:
        """Return once a read has started waiting here."""
        await self._reached.wait()

    def resolve(self, outcome: Any) -> None:
        """Let the waiting read return ``outcome``: a chunk, an exception to raise, or END."""
        assert self._waiter is not None and not self._waiter.done(), "no read is waiting at this stall"
        self._waiter.set_result(outcome)

    async def wait(self) -> Any:
        self._waiter = asyncio.get_running_loop().create_future()
        self._reached.set()
        try:
            return await self._waiter
        except asyncio.CancelledError as exc:
            self.cancelled_with = exc
            raise
        finally:
            # A cancelled future caches its exception where the collector cannot see it; holding the
            # future here would tie this stall (and its script) into an uncollectable cycle.
            self._waiter = None


class _ScriptedIterator:
    """Plays a script: chunks are returned, exceptions raised, stalls awaited, the end is StopAsyncIteration."""

    def __init__(self, source: _ScriptedBase) -> None:
        self.source = source
        self.position = 0

    def __aiter__(self) -> _ScriptedIterator:
        return self

    async def __anext__(self) -> Any:
        source = self.source
        source.anext_calls += 1
        script = source.script
        if self.position >= len(script):
            raise StopAsyncIteration
        item = script[self.position]
        self.position += 1
        if isinstance(item, Stall):
            item = await item.wait()
        if item is END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item


class _ClosableScriptedIterator(_ScriptedIterator):
    async def aclose(self) -> None:
        self.source.iterator_aclose_started += 1
        await asyncio.sleep(0)  # a real suspension: finishing proves the caller awaited it
        self.source.iterator_aclose_finished += 1


class _ScriptedBase:
    def __init__(self, script: Sequence[Any]) -> None:
        self.script = list(script)
        self.aiter_calls = 0
        self.anext_calls = 0
        self.source_aclose_started = 0
        self.source_aclose_finished = 0
        self.iterator_aclose_started = 0
        self.iterator_aclose_finished = 0


class BareSource(_ScriptedBase):
    """A scripted async iterable without ``aclose`` anywhere."""

    def __aiter__(self) -> _ScriptedIterator:
        self.aiter_calls += 1
        return _ScriptedIterator(self)


class ScriptedSource(_ScriptedBase):
    """A scripted async iterable whose iterator is a separate object; both have an ``aclose``."""

    def __aiter__(self) -> _ClosableScriptedIterator:
        self.aiter_calls += 1
        return _ClosableScriptedIterator(self)

    async def aclose(self) -> None:
        self.source_aclose_started += 1
        await asyncio.sleep(0)
        self.source_aclose_finished += 1


class AccessRecordingSource:
    """An async iterable that logs every attribute looked up on it and counts ``__aiter__`` calls.

    The method bodies read their own state through ``object.__getattribute__`` so that only what others
    do to the object lands in the log.
    """

    def __init__(self, chunks: Sequence[Any]) -> None:
        object.__setattr__(self, "log", [])
        object.__setattr__(self, "counts", {"__aiter__": 0})
        object.__setattr__(self, "_inner", BareSource(chunks))

    def __getattribute__(self, name: str) -> Any:
        object.__getattribute__(self, "log").append(name)
        return object.__getattribute__(self, name)

    def __aiter__(self) -> _ScriptedIterator:
        object.__getattribute__(self, "counts")["__aiter__"] += 1
        inner: BareSource = object.__getattribute__(self, "_inner")
        return inner.__aiter__()


def accesses_of(source: AccessRecordingSource) -> list[str]:
    """The attribute log of a recording source, read without adding to it."""
    return list(object.__getattribute__(source, "log"))


def aiter_calls_of(source: AccessRecordingSource) -> int:
    """How many times ``__aiter__`` ran on a recording source."""
    return int(object.__getattribute__(source, "counts")["__aiter__"])


@dataclass(frozen=True)
class ReleaseCall:
    """What on_release saw when it was called."""

    state: str
    owner_was_none: bool
    task: asyncio.Task[Any] | None


class ReleaseRecorder:
    """An on_release callback that records each call; optionally raises after recording."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.calls: list[ReleaseCall] = []
        self.raises = raises

    def __call__(self, pipe: Any) -> None:
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        self.calls.append(ReleaseCall(pipe.state, pipe.owner is None, task))
        if self.raises is not None:
            raise self.raises


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Make ``gc.collect()`` cheap inside the block: what exists now is moved out of the collector's view.

    Only objects created inside the block are examined, which is all a test of the pipe's own references
    needs; the heap of the test session (hypothesis, pytest) is large and would make each pass slow.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """Collect what reaches the running loop's exception handler while the block runs."""
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    try:
        yield contexts
    finally:
        loop.set_exception_handler(previous)


async def pull(pipe: Any) -> Any:
    """One pull, as ``async for`` does it."""
    return await pipe.__anext__()


async def drain(pipe: Any) -> list[Any]:
    """Every remaining chunk, until the pipe ends."""
    return [chunk async for chunk in pipe]


async def settle(rounds: int = 10) -> None:
    """Let every ready callback run: a bounded number of loop iterations, no wall clock."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def unique_chunks(count: int, size: int = 64) -> list[bytes]:
    """Distinct bytes objects that no interpreter cache shares (so refcounts and identity are ours)."""
    return [bytes(bytearray(f"{index:08d}".encode() * (size // 8))) for index in range(count)]


class RecordingProducer:
    """A producer (the asyncio read-transport interface) that records pause/resume calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


class RecordingSink:
    """A sink that records what it receives; ``on_write`` lets a test act from inside ``write``."""

    def __init__(self, on_write: Callable[[Any], None] | None = None) -> None:
        self.chunks: list[Any] = []
        self.ends: list[tuple[str, BaseException | None, bool]] = []
        self.on_write = on_write

    def write(self, chunk: Any) -> None:
        self.chunks.append(chunk)
        if self.on_write is not None:
            self.on_write(chunk)

    def end(self, pipe: Any) -> None:
        self.ends.append((pipe.state, pipe.exception, pipe.owner is None))
