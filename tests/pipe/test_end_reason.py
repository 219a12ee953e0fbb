"""end_reason, cancel/aclose/feed_error reasons, start_draining, add_done_callback and on_disconnect.

How a pipe ended is part of its contract: a gateway logs and bills by it. Without a word from whoever
finished the pipe, the reason follows from the state; the sinks and the tee give the precise one.
"""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest

from fastpipe.disconnect import CANCEL, DisconnectPolicy
from fastpipe.end_reason import EndReason

from ._support import END, Owner, ScriptedSource, Stall, drain, pull


class Boom(Exception):
    pass


async def test_end_reason_is_none_while_the_pipe_runs(impl: ModuleType) -> None:
    pipe = impl.Pipe(ScriptedSource([b"a", END]))
    assert pipe.end_reason is None
    await pull(pipe)
    assert pipe.state == "open" and pipe.end_reason is None
    await pipe.aclose()


@pytest.mark.parametrize(
    ("script", "expected"),
    [([b"a", END], EndReason.COMPLETE), ([b"a", Boom("upstream")], EndReason.UPSTREAM_ERROR)],
    ids=["eof", "error"],
)
async def test_end_reason_follows_from_a_clean_end_or_an_error(impl: ModuleType, script: Any, expected: Any) -> None:
    pipe = impl.Pipe(ScriptedSource(script))
    with pytest.raises((StopAsyncIteration, Boom)):
        for _ in range(3):
            await pull(pipe)
    assert pipe.end_reason is expected
    assert pipe.end_reason == expected.value  # a str enum: logs and JSON take it as it is


async def test_a_cancel_without_a_reason_is_cancelled_and_with_one_keeps_it(impl: ModuleType) -> None:
    plain = impl.Pipe(ScriptedSource([b"a"]))
    await plain.aclose()
    assert plain.end_reason is EndReason.CANCELLED
    told = impl.Pipe(ScriptedSource([b"a"]))
    told.cancel(EndReason.CLIENT_GONE)
    assert told.end_reason is EndReason.CLIENT_GONE
    by_value = impl.Pipe(ScriptedSource([b"a"]))
    await by_value.aclose("drain-cut-timeout")
    assert by_value.end_reason is EndReason.DRAIN_CUT_TIMEOUT


async def test_the_first_cancel_gives_the_reason_later_ones_change_nothing(impl: ModuleType) -> None:
    pipe = impl.Pipe(ScriptedSource([b"a", END]))
    pipe.cancel(EndReason.DRAIN_CUT_BYTES)
    await pipe.aclose(EndReason.CLIENT_GONE)
    assert pipe.end_reason is EndReason.DRAIN_CUT_BYTES
    done = impl.Pipe(ScriptedSource([END]))
    assert await drain(done) == []
    await done.aclose(EndReason.CLIENT_GONE)
    assert done.end_reason is EndReason.COMPLETE


async def test_a_reason_given_while_a_pull_is_pending_survives_that_pull_being_cancelled(impl: ModuleType) -> None:
    """The sinks' order: cancel(reason) first, then cancel the task whose pull waits on the source."""
    stall = Stall()
    pipe = impl.Pipe(ScriptedSource([stall]))
    pending = asyncio.ensure_future(pull(pipe))
    await stall.reached()
    pipe.cancel(EndReason.CLIENT_GONE)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert pipe.state == "cancelled" and pipe.end_reason is EndReason.CLIENT_GONE


async def test_a_drained_pipe_that_ends_cleanly_says_drained_and_an_error_stays_an_error(impl: ModuleType) -> None:
    pipe = impl.Pipe(ScriptedSource([b"a", END]))
    await pull(pipe)
    pipe.start_draining()
    assert await drain(pipe) == []
    assert pipe.state == "closed" and pipe.end_reason is EndReason.DRAINED
    failing = impl.Pipe(ScriptedSource([b"a", Boom("x")]))
    failing.start_draining()
    with pytest.raises(Boom):
        await drain(failing)
    assert failing.end_reason is EndReason.UPSTREAM_ERROR


async def test_feed_error_takes_a_reason_for_the_pushed_face(impl: ModuleType) -> None:
    pipe = impl.Pipe.pushed(Owner())
    pipe.feed(b"a")
    pipe.feed_error(Boom("cut"), EndReason.DRAIN_CUT_TIMEOUT)
    assert await pull(pipe) == b"a"
    with pytest.raises(Boom):
        await pull(pipe)
    assert pipe.end_reason is EndReason.DRAIN_CUT_TIMEOUT
    plain = impl.Pipe.pushed()
    plain.feed_error(Boom("x"))
    with pytest.raises(Boom):
        await pull(plain)
    assert plain.end_reason is EndReason.UPSTREAM_ERROR


async def test_bad_reasons_are_refused_precisely(impl: ModuleType) -> None:
    pipe = impl.Pipe(ScriptedSource([b"a"]))
    with pytest.raises(ValueError, match="an end reason must be an EndReason"):
        pipe.cancel("gone")
    with pytest.raises(ValueError, match="an end reason must be an EndReason"):
        await pipe.aclose(42)
    with pytest.raises(ValueError, match="an end reason must be an EndReason"):
        impl.Pipe.pushed().feed_error(Boom(), "nope")
    assert pipe.state == "idle", "a refused reason must not cancel the pipe"


# -- add_done_callback ----------------------------------------------------------------------------------------


async def test_done_callbacks_run_once_after_on_release_with_the_final_reason(impl: ModuleType) -> None:
    calls: list[tuple[str, Any, Any]] = []
    pipe = impl.Pipe(
        ScriptedSource([b"a", END]), Owner(), on_release=lambda p: calls.append(("release", p.state, p.end_reason))
    )
    pipe.add_done_callback(lambda p: calls.append(("done-1", p.owner, p.end_reason)))
    pipe.add_done_callback(lambda p: calls.append(("done-2", p.owner, p.end_reason)))
    assert await drain(pipe) == [b"a"]
    await pipe.aclose()
    assert calls == [
        ("release", "closed", EndReason.COMPLETE),
        ("done-1", None, EndReason.COMPLETE),
        ("done-2", None, EndReason.COMPLETE),
    ]


async def test_a_done_callback_added_to_a_finished_pipe_runs_at_once(impl: ModuleType) -> None:
    pipe = impl.Pipe(ScriptedSource([b"a"]))
    pipe.cancel(EndReason.CLIENT_GONE)
    seen: list[Any] = []
    pipe.add_done_callback(lambda p: seen.append(p.end_reason))
    assert seen == [EndReason.CLIENT_GONE]


async def test_a_failing_done_callback_goes_to_the_loop_not_into_the_stream(impl: ModuleType) -> None:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    pipe = impl.Pipe(ScriptedSource([b"a", END]))
    pipe.add_done_callback(lambda _p: 1 / 0)
    assert await drain(pipe) == [b"a"]
    assert [type(context["exception"]) for context in errors] == [ZeroDivisionError]
    with pytest.raises(TypeError, match="callable"):
        pipe.add_done_callback("not callable")  # type: ignore[arg-type]


# -- on_disconnect belongs to the pipe ------------------------------------------------------------------------


async def test_on_disconnect_defaults_to_cancel_and_is_the_pipes_own(impl: ModuleType) -> None:
    drain_policy = DisconnectPolicy.drain(max_bytes=10, timeout=1)
    assert impl.Pipe(ScriptedSource([])).on_disconnect is CANCEL
    assert impl.Pipe(ScriptedSource([]), on_disconnect=drain_policy).on_disconnect is drain_policy
    assert impl.Pipe.pushed(on_disconnect=drain_policy).on_disconnect is drain_policy
    pipe = impl.Pipe(ScriptedSource([]))
    pipe.on_disconnect = drain_policy
    assert pipe.on_disconnect is drain_policy
    with pytest.raises(TypeError, match="on_disconnect must be a DisconnectPolicy"):
        pipe.on_disconnect = "drain"  # type: ignore[assignment]
    with pytest.raises(TypeError, match="on_disconnect must be a DisconnectPolicy"):
        impl.Pipe(ScriptedSource([]), on_disconnect="cancel")
