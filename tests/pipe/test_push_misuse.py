"""Push face misuse gets a precise error: feed after the end, push calls on a pull pipe, bad water marks."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from ._support import BareSource, Owner, RecordingSink, drain, pull


@pytest.mark.parametrize("connected", [False, True], ids=["queued", "connected"])
def test_feed_after_feed_eof_raises_runtime_error(impl: ModuleType, connected: bool) -> None:
    pipe = impl.Pipe.pushed(Owner())
    if connected:
        pipe.connect(RecordingSink())
    pipe.feed(b"a")
    pipe.feed_eof()
    with pytest.raises(RuntimeError):
        pipe.feed(b"b")
    with pytest.raises(RuntimeError):
        pipe.feed_eof()
    with pytest.raises(RuntimeError):
        pipe.feed_error(ValueError("x"))
    pipe.cancel()


@pytest.mark.parametrize("connected", [False, True], ids=["queued", "connected"])
def test_feed_after_feed_error_raises_runtime_error(impl: ModuleType, connected: bool) -> None:
    pipe = impl.Pipe.pushed(Owner())
    if connected:
        pipe.connect(RecordingSink())
    pipe.feed_error(ValueError("x"))
    with pytest.raises(RuntimeError):
        pipe.feed(b"b")
    pipe.cancel()


async def test_push_calls_on_an_idle_pull_pipe_raise_runtime_error(impl: ModuleType) -> None:
    pipe = impl.Pipe(BareSource([b"a"]))
    with pytest.raises(RuntimeError):
        pipe.feed(b"x")
    with pytest.raises(RuntimeError):
        pipe.feed_eof()
    with pytest.raises(RuntimeError):
        pipe.feed_error(ValueError("x"))
    with pytest.raises(RuntimeError):
        pipe.connect(RecordingSink())
    assert pipe.state == "idle"
    assert await drain(pipe) == [b"a"]


async def test_feed_on_an_open_pull_pipe_raises_runtime_error(impl: ModuleType) -> None:
    pipe = impl.Pipe(BareSource([b"a", b"b"]))
    assert await pull(pipe) == b"a"
    with pytest.raises(RuntimeError):
        pipe.feed(b"x")
    with pytest.raises(RuntimeError):
        pipe.feed_eof()
    assert await drain(pipe) == [b"b"]


async def test_feed_on_a_closed_pull_pipe_raises_runtime_error(impl: ModuleType) -> None:
    pipe = impl.Pipe(BareSource([]))
    await drain(pipe)
    with pytest.raises(RuntimeError):
        pipe.feed(b"x")


@pytest.mark.parametrize(
    ("high_water", "low_water"),
    [(10, 11), (10, -1), (-1, None), (-8, -2)],
    ids=["low_above_high", "negative_low", "negative_high", "both_negative"],
)
def test_invalid_water_marks_raise_value_error(impl: ModuleType, high_water: int, low_water: Any) -> None:
    with pytest.raises(ValueError):
        impl.Pipe.pushed(Owner(), high_water=high_water, low_water=low_water)


@pytest.mark.parametrize(("high_water", "low_water"), [(0, 0), (10, 10), (10, 0), (10, None)])
def test_valid_water_marks_are_accepted(impl: ModuleType, high_water: int, low_water: Any) -> None:
    pipe = impl.Pipe.pushed(Owner(), high_water=high_water, low_water=low_water)
    assert pipe.paused is False
    pipe.cancel()


def test_feed_error_needs_an_exception(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())
    with pytest.raises(TypeError):
        pipe.feed_error("not an exception")
    pipe.cancel()


@pytest.mark.parametrize("connected", [False, True], ids=["queued", "connected"])
async def test_feeding_a_non_bytes_chunk_raises_type_error_and_passes_nothing(
    impl: ModuleType, connected: bool
) -> None:
    sink = RecordingSink()
    pipe = impl.Pipe.pushed(Owner())
    if connected:
        pipe.connect(sink)
    with pytest.raises(TypeError):
        pipe.feed("text")
    pipe.feed(b"ok")
    pipe.feed_eof()
    if connected:
        assert sink.chunks == [b"ok"]
    else:
        assert await drain(pipe) == [b"ok"]
    assert (pipe.chunks, pipe.nbytes) == (1, 2)
