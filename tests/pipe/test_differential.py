"""Differential property tests: random schedules played on both implementations give identical traces,
and every trace obeys the contract.

A schedule mixes pulls (several may be pending at once), acloses from the driving task while a pull
waits in another, sync cancels, cancellations of the pulling task, and a source whose reads return
chunks, end, fail, return non-bytes or stall until the schedule releases them. The push face gets the
same treatment with feeds, ends, errors, sinks and flow control.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._schedules import PullPlan, PushPlan, Read, Trace, play

FINAL_STATES = {"closed", "errored", "cancelled"}
BOTH = ("fastpipe._pipe_py", "fastpipe._pipe")
SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

reads = st.builds(
    Read,
    kind=st.sampled_from(["chunk", "chunk", "chunk", "end", "error", "bad"]),
    chunk_type=st.sampled_from(["bytes", "bytearray", "memoryview"]),
    size=st.integers(0, 6),
    stalls=st.booleans(),
)
pull_plans = st.builds(
    PullPlan,
    reads=st.lists(reads, max_size=6).map(tuple),
    steps=st.lists(
        st.sampled_from(["pull", "pull", "pull", "release", "release", "aclose", "cancel", "cancel_task", "tick"]),
        max_size=14,
    ).map(tuple),
    closable=st.booleans(),
)
push_steps = st.tuples(
    st.sampled_from(
        [
            "feed",
            "feed",
            "feed",
            "feed_bad",
            "feed_eof",
            "feed_error",
            "connect",
            "pull",
            "pull",
            "pause_producing",
            "resume_producing",
            "cancel",
            "aclose",
            "cancel_task",
        ]
    ),
    st.integers(0, 9),
)


@st.composite
def push_plans(draw: st.DrawFn) -> PushPlan:
    high_water = draw(st.integers(0, 16))
    low_water = draw(st.none() | st.integers(0, high_water))
    steps = tuple(draw(st.lists(push_steps, max_size=14)))
    return PushPlan(steps=steps, high_water=high_water, low_water=low_water, with_producer=draw(st.booleans()))


# -- the contract, stated over one trace ------------------------------------------------------------------


def _check_lifecycle(trace: Trace) -> None:
    """States only move forward; release happens exactly once, with the final state set and no owner."""
    state = "idle"
    released = False
    for record in trace:
        kind = record[0]
        if kind == "release":
            assert not released, f"on_release called twice: {trace}"
            released = True
            _, release_state, owner_none, owner_dead = record
            assert release_state in FINAL_STATES
            assert owner_none and owner_dead, "on_release ran while the owner was still reachable"
        elif kind in ("after", "finished"):
            new_state, owner_dead = record[1], record[-1]
            if state in FINAL_STATES:
                assert new_state == state, f"a {state} pipe became {new_state}"
            assert owner_dead == released, "the owner must live exactly until the release"
            state = new_state
        elif kind == "pull.got":
            assert record[-1] is True, "a chunk was not passed on as the object the source produced"
            assert state != "cancelled", "a chunk was delivered after cancellation"
        elif kind == "pull.raised" and state == "errored":
            assert record[2] in ("PipeError", "RuntimeError", "CancelledError"), record
        elif kind == "loop.error":
            raise AssertionError(f"unexpected error reported to the loop: {record}")
    assert state in FINAL_STATES, "the schedule's finish left the pipe unfinished"
    assert released, "a finished pipe never called on_release"


def check_pull_trace(trace: Trace, plan: PullPlan) -> None:
    _check_lifecycle(trace)
    assert sum(record[0] == "source.aiter" for record in trace) <= 1
    # One for one: never more reads than pulls that reached the source.
    assert sum(record[0] == "source.anext" for record in trace) <= plan.steps.count("pull")
    states = [record[1] for record in trace if record[0] == "after"]
    if "cancelled" in states:
        assert states[-1] == "cancelled"


def check_push_trace(trace: Trace) -> None:
    _check_lifecycle(trace)
    ends = [record[1] for record in trace if record[0] == "sink.end"]
    assert len(ends) == len(set(ends)), "a sink was ended twice"
    producer_calls = [record[0] for record in trace if record[0].startswith("producer.")]
    assert producer_calls[::2] == ["producer.pause"] * len(producer_calls[::2]), "pause was repeated"
    assert producer_calls[1::2] == ["producer.resume"] * len(producer_calls[1::2]), "resume was repeated"
    state = "idle"
    for record in trace:
        if record[0] == "after":
            state = record[1]
        elif record[:2] == ("call.returned", "feed") and state == "cancelled":
            assert record[2] is False, "feed() on a cancelled pipe must return False"


# -- the tests ------------------------------------------------------------------------------------------


@SETTINGS
@given(plan=pull_plans)
def test_pull_schedules_obey_the_contract(impl: ModuleType, plan: PullPlan) -> None:
    check_pull_trace(play(impl, plan), plan)


@SETTINGS
@given(plan=push_plans())
def test_push_schedules_obey_the_contract(impl: ModuleType, plan: PushPlan) -> None:
    check_push_trace(play(impl, plan))


def _both() -> list[ModuleType]:
    return [importlib.import_module(name) for name in BOTH]


@pytest.mark.parametrize("pair", ["py-vs-c"])
@SETTINGS
@given(plan=pull_plans)
def test_pull_schedules_give_identical_traces_on_both_implementations(pair: str, plan: PullPlan) -> None:
    python, compiled = _both()
    python_trace = play(python, plan)
    compiled_trace = play(compiled, plan)
    check_pull_trace(compiled_trace, plan)
    assert compiled_trace == python_trace


@pytest.mark.parametrize("pair", ["py-vs-c"])
@SETTINGS
@given(plan=push_plans())
def test_push_schedules_give_identical_traces_on_both_implementations(pair: str, plan: PushPlan) -> None:
    python, compiled = _both()
    python_trace = play(python, plan)
    compiled_trace = play(compiled, plan)
    check_push_trace(compiled_trace)
    assert compiled_trace == python_trace


def test_a_recorded_trace_shows_what_the_checks_rely_on() -> None:
    # Guards the checker itself: a plain read-to-the-end schedule must produce the records it looks at.
    plan = PullPlan(reads=(Read("chunk", size=2), Read("end")), steps=("pull", "pull"), closable=True)
    trace: Any = play(importlib.import_module("fastpipe._pipe_py"), plan)
    kinds = [record[0] for record in trace]
    assert kinds.count("pull.got") == 1
    assert kinds.count("release") == 1
    assert ("release", "closed", True, True) in trace
    check_pull_trace(trace, plan)
    with pytest.raises(AssertionError):
        check_pull_trace([*trace, ("release", "closed", True, True)], plan)
