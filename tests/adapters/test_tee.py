"""tee(): identical chunks, owner retention until the last branch, overflow, and the disconnect policy.

Every test runs on both Pipe implementations: the source pipe comes from the ``impl`` fixture, and the
branches must be pipes of the same implementation.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from types import ModuleType
from typing import Any, AsyncIterator

import pytest

from fastpipe.tee import BranchOverflow, DisconnectPolicy, SourceCancelled, tee

from ._support import Owner, Releases, UpstreamBroke, chunks, piece, settle


async def drain(pipe: Any) -> list[Any]:
    return [chunk async for chunk in pipe]


async def drain_outcome(pipe: Any) -> tuple[list[Any], BaseException | None]:
    got: list[Any] = []
    try:
        async for chunk in pipe:
            got.append(chunk)
    except Exception as exc:
        return got, exc
    return got, None


class CountingSource:
    """An async iterable over fixed chunk objects that counts the reads asked of it."""

    def __init__(self, items: list[bytes], then_hang: bool = False) -> None:
        self.items = items
        self.reads = 0
        self.then_hang = then_hang
        self.closed = False

    async def _gen(self) -> AsyncIterator[bytes]:
        try:
            for item in self.items:
                self.reads += 1
                await asyncio.sleep(0)
                yield item
            if self.then_hang:
                await asyncio.Event().wait()
        finally:
            self.closed = True

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()


# -- what every branch sees -------------------------------------------------------------------------------


async def test_branches_are_pipes_of_the_source_implementation(impl: ModuleType) -> None:
    branches = tee(impl.Pipe(chunks(2, 10)), 3)
    assert len(branches) == 3
    assert all(type(branch) is impl.Pipe for branch in branches)
    for branch in branches:
        await drain(branch)


async def test_every_branch_sees_the_identical_chunk_objects(impl: ModuleType) -> None:
    items = [piece(i, 100 + i) for i in range(50)]
    items.append(bytearray(b"a bytearray"))
    items.append(memoryview(b"0123456789")[2:8])
    source = impl.Pipe(CountingSource(items), Owner())
    branches = tee(source, 3)
    results = await asyncio.gather(*(drain(branch) for branch in branches))
    for got in results:
        assert len(got) == len(items)
        assert all(a is b for a, b in zip(got, items, strict=True)), "a branch got a copy instead of the chunk object"
    assert [branch.state for branch in branches] == ["closed"] * 3
    assert source.state == "closed"
    assert branches[0].nbytes == sum(len(bytes(item)) for item in items)


async def test_source_error_reaches_every_branch(impl: ModuleType) -> None:
    branches = tee(impl.Pipe(chunks(5, 10, then="fail")), 2)
    outcomes = await asyncio.gather(*(drain_outcome(branch) for branch in branches))
    for got, error in outcomes:
        assert len(got) == 5
        assert isinstance(error, UpstreamBroke)
    assert [branch.state for branch in branches] == ["errored", "errored"]


async def test_branch_owner_is_the_source_owner(impl: ModuleType) -> None:
    owner = Owner()
    branches = tee(impl.Pipe(chunks(1, 1), owner), 2)
    assert all(branch.owner is owner for branch in branches)
    for branch in branches:
        await drain(branch)
    assert all(branch.owner is None for branch in branches)


# -- the seed's hazard: side branches finishing early must not let the owner go ----------------------------


def _naive_tee(impl: ModuleType, items: list[bytes], owner: object) -> tuple[Any, Any]:
    """The seed's shape: two queues fed from the body; only the side branch's pipe holds the owner."""
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(), asyncio.Queue()]
    for item in [*items, None]:
        for queue in queues:
            queue.put_nowait(item)

    async def branch(queue: asyncio.Queue[Any]) -> AsyncIterator[bytes]:
        while (item := await queue.get()) is not None:
            yield item

    return impl.Pipe(branch(queues[0])), impl.Pipe(branch(queues[1]), owner)


@pytest.mark.parametrize("tee_kind", ["fastpipe", "naive"])
async def test_owner_outlives_early_finishing_secondaries(impl: ModuleType, tee_kind: str) -> None:
    """Secondaries read to the end first; the owner must live until the primary (still reading) ends.

    The ``naive`` case is the negative control: with the owner held by a side branch only, the same
    check sees the owner collected while the primary still streams.
    """
    items = [piece(i, 64) for i in range(40)]
    owner = Owner()
    alive = weakref.ref(owner)
    if tee_kind == "fastpipe":
        source_releases = Releases()
        source = impl.Pipe(CountingSource(items), owner, on_release=source_releases)
        primary, *secondaries = tee(source, 3)
        del source
    else:
        primary, secondary = _naive_tee(impl, items, owner)
        secondaries = [secondary]
    del owner

    first = await primary.__anext__()
    for secondary in secondaries:
        assert len(await drain(secondary)) == len(items)
    del secondaries, secondary
    gc.collect()
    await settle()
    gc.collect()

    if tee_kind == "naive":
        assert alive() is None, "negative control: the naive tee should have let the owner go"
        await drain(primary)
        return
    assert source_releases.calls and source_releases.calls[0][0] == "closed"  # the upstream is done ...
    assert alive() is not None, "the owner went while the primary was still streaming"  # ... the owner is not
    rest = await drain(primary)
    assert [first, *rest] == items
    gc.collect()
    assert alive() is None, "the owner outlived every branch"


async def test_owner_outlives_cancelled_secondaries_while_the_source_streams(impl: ModuleType) -> None:
    owner = Owner()
    alive = weakref.ref(owner)
    releases = Releases()
    primary, first_side, second_side = tee(impl.Pipe(chunks(30, 50, delay=0.001), owner, on_release=releases), 3)
    del owner
    await primary.__anext__()
    await first_side.aclose()
    second_side.cancel()
    del first_side, second_side
    gc.collect()
    assert alive() is not None
    got = 1 + len(await drain(primary))
    assert got == 30
    assert primary.state == "closed"
    assert releases.calls[0][0] == "closed", "cancelled secondaries must not cancel the source"
    gc.collect()
    assert alive() is None


async def test_owner_survives_gc_when_only_running_tasks_hold_the_branches(impl: ModuleType) -> None:
    owner = Owner()
    alive = weakref.ref(owner)
    primary, side = tee(impl.Pipe(chunks(20, 10, delay=0.002), owner), 2)
    del owner
    tasks = [asyncio.ensure_future(drain(primary)), asyncio.ensure_future(drain(side))]
    del primary, side
    for _ in range(5):
        await asyncio.sleep(0.004)
        gc.collect()
        if not all(task.done() for task in tasks):
            assert alive() is not None
    results = await asyncio.gather(*tasks)
    assert [len(result) for result in results] == [20, 20]


# -- secondaries cannot hurt the primary --------------------------------------------------------------------


async def test_slow_secondary_is_detached_and_never_stalls_the_primary(impl: ModuleType) -> None:
    primary, idle = tee(impl.Pipe(chunks(100, 100)), 2, max_buffer=1000)
    assert len(await asyncio.wait_for(drain(primary), 5)) == 100  # nobody reads `idle` meanwhile
    assert primary.state == "closed"
    got, error = await drain_outcome(idle)
    assert isinstance(error, BranchOverflow)
    assert error.branch == 1 and error.max_buffer == 1000
    assert 1000 < sum(len(chunk) for chunk in got) <= 1100  # what it had queued when detached
    assert idle.state == "errored"


async def test_secondary_that_keeps_up_is_never_detached(impl: ModuleType) -> None:
    primary, side = tee(impl.Pipe(chunks(200, 100)), 2, max_buffer=500)
    results = await asyncio.gather(drain(primary), drain(side))
    assert [len(result) for result in results] == [200, 200]


async def test_cancelled_secondary_never_cancels_the_primary(impl: ModuleType) -> None:
    releases = Releases()
    primary, side = tee(impl.Pipe(chunks(20, 10, delay=0.001), on_release=releases), 2)
    reader = asyncio.ensure_future(drain(side))
    await asyncio.sleep(0.005)
    reader.cancel()  # the secondary's consumer task is cancelled mid-pull
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert side.state == "cancelled"
    assert len(await drain(primary)) == 20
    assert releases.calls[0][0] == "closed"


async def test_reader_reads_nothing_before_the_primary_asks_then_at_most_high_water_ahead(impl: ModuleType) -> None:
    source = CountingSource([piece(i, 1000) for i in range(100)])
    primary, side = tee(impl.Pipe(source), 2, high_water=5000)
    side_reader = asyncio.ensure_future(drain(side))
    await settle(200)
    assert source.reads == 0, f"read {source.reads} chunks before anyone asked for the primary"
    first = await primary.__anext__()
    await settle(200)
    assert 6 <= source.reads <= 8, f"read {source.reads} chunks for a primary that pulled one"
    rest = await drain(primary)
    assert [first, *rest] == [piece(i, 1000) for i in range(100)]
    assert len(await side_reader) == 100


# -- the disconnect policy: the primary leaves ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["aclose", "cancel", "task-cancelled"])
async def test_cancel_policy_cancels_the_source_when_the_primary_leaves(impl: ModuleType, how: str) -> None:
    releases = Releases()
    source = CountingSource([piece(i, 10) for i in range(5)], then_hang=True)
    primary, side = tee(impl.Pipe(source, Owner(), on_release=releases), 2)
    assert len([await primary.__anext__() for _ in range(5)]) == 5
    side_reader = asyncio.ensure_future(drain_outcome(side))
    if how == "aclose":
        await primary.aclose()
    elif how == "cancel":
        primary.cancel()
    else:
        pulling = asyncio.ensure_future(primary.__anext__())
        await settle()
        pulling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pulling
    state, _ = await releases.wait(1)
    assert state == "cancelled", "the source must be cancelled with the primary"
    await settle()
    assert source.closed
    got, error = await asyncio.wait_for(side_reader, 1)
    assert len(got) == 5
    assert isinstance(error, SourceCancelled), "a cut secondary must not end cleanly"
    assert primary.state == "cancelled"


async def test_drain_policy_feeds_the_secondaries_to_the_end_after_the_primary_left(impl: ModuleType) -> None:
    releases = Releases()
    source = impl.Pipe(chunks(50, 100, delay=0.001), Owner(), on_release=releases)
    primary, usage = tee(source, 2, on_disconnect=DisconnectPolicy.drain(max_bytes=10_000, timeout=5))
    usage_reader = asyncio.ensure_future(drain(usage))
    for _ in range(3):
        await primary.__anext__()
    await primary.aclose()
    got = await asyncio.wait_for(usage_reader, 5)
    assert got == [piece(i, 100) for i in range(50)], "the secondary must get the whole body"
    assert usage.state == "closed"
    assert releases.calls[0][0] == "closed", "the upstream was read to its end, not cut"


async def test_drain_stops_at_the_byte_bound(impl: ModuleType) -> None:
    releases = Releases()
    source = impl.Pipe(chunks(100, 100), Owner(), on_release=releases)
    primary, side = tee(source, 2, high_water=0, on_disconnect=DisconnectPolicy.drain(max_bytes=1050, timeout=5))
    side_reader = asyncio.ensure_future(drain_outcome(side))
    first = await primary.__anext__()
    await primary.aclose()
    got, error = await asyncio.wait_for(side_reader, 5)
    assert isinstance(error, SourceCancelled) and "byte bound" in str(error)
    received = sum(len(chunk) for chunk in got)
    # What was read before the primary left (at most two chunks, high_water=0) plus at most 1050 after.
    assert len(first) + 1000 <= received <= 2 * len(first) + 1050
    state, _ = await releases.wait(1)
    assert state == "cancelled"


async def test_drain_stops_at_the_time_bound(impl: ModuleType) -> None:
    releases = Releases()
    source = impl.Pipe(chunks(3, 10, then="hang"), Owner(), on_release=releases)
    primary, side = tee(source, 2, on_disconnect=DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.2))
    side_reader = asyncio.ensure_future(drain_outcome(side))
    await primary.__anext__()
    left_at = time.monotonic()
    await primary.aclose()
    got, error = await asyncio.wait_for(side_reader, 3)
    state, released_at = await releases.wait(1)
    assert isinstance(error, SourceCancelled) and "time bound" in str(error)
    assert len(got) == 3
    assert state == "cancelled"
    assert 0.15 <= released_at - left_at < 1.0


async def test_drain_with_no_secondary_left_releases_at_once(impl: ModuleType) -> None:
    releases = Releases()
    source = impl.Pipe(chunks(3, 10, then="hang"), Owner(), on_release=releases)
    primary, side = tee(source, 2, on_disconnect=DisconnectPolicy.drain(max_bytes=1 << 20, timeout=30))
    await side.aclose()
    await primary.__anext__()
    await primary.aclose()
    state, _ = await releases.wait(0.5)
    assert state == "cancelled"


async def test_drain_paces_the_reader_by_the_secondaries(impl: ModuleType) -> None:
    """After the primary left, a slow secondary is not detached: it now sets the pace."""
    primary, side = tee(
        impl.Pipe(chunks(60, 100)),
        2,
        max_buffer=300,
        on_disconnect=DisconnectPolicy.drain(max_bytes=1 << 20, timeout=5),
    )
    await primary.__anext__()
    await primary.aclose()
    got = []
    async for chunk in side:
        got.append(chunk)
        await asyncio.sleep(0)  # slower than the source
    assert len(got) == 60


# -- misuse ---------------------------------------------------------------------------------------------------


async def test_tee_refuses_bad_arguments(impl: ModuleType) -> None:
    pipe = impl.Pipe(chunks(2, 1))
    with pytest.raises(ValueError, match="n >= 1"):
        tee(pipe, 0)
    with pytest.raises(ValueError, match="max_buffer"):
        tee(pipe, 2, max_buffer=-1)
    with pytest.raises(TypeError, match="DisconnectPolicy"):
        tee(pipe, 2, on_disconnect="drain")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fastpipe Pipe"):
        tee(chunks(2, 1), 2)  # type: ignore[arg-type]
    await pipe.__anext__()
    with pytest.raises(ValueError, match="nothing has pulled"):
        tee(pipe, 2)
    await pipe.aclose()


def test_disconnect_policy_validates_its_bounds() -> None:
    assert DisconnectPolicy.cancel().mode == "cancel"
    drain_policy = DisconnectPolicy.drain(max_bytes=10, timeout=1.5)
    assert (drain_policy.mode, drain_policy.max_bytes, drain_policy.timeout) == ("drain", 10, 1.5)
    for bad in (dict(max_bytes=-1, timeout=1), dict(max_bytes=1, timeout=0), dict(max_bytes=1, timeout=float("inf"))):
        with pytest.raises(ValueError):
            DisconnectPolicy.drain(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'cancel' or 'drain'"):
        DisconnectPolicy("wait")  # type: ignore[arg-type]


# -- the bounds hold from the moment the tee exists ----------------------------------------------------------


async def test_a_primary_never_served_under_a_drain_is_cut_at_the_time_bound(impl: ModuleType) -> None:
    """The handler never returned the primary's response, yet keeps it referenced: at the drain's timeout
    after tee() the source is released, and the primary, if pulled at last, says it was cut."""
    releases = Releases()
    source = impl.Pipe(chunks(3, 10, then="hang"), Owner(), on_release=releases)
    created_at = time.monotonic()
    primary, side = tee(source, 2, on_disconnect=DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.2))
    got, error = await asyncio.wait_for(drain_outcome(side), 3)
    state, released_at = await releases.wait(1)
    assert isinstance(error, SourceCancelled) and "time bound" in str(error)
    assert got == [], "nothing may be read for a client that never asked"
    assert state == "cancelled" and 0.15 <= released_at - created_at < 1.0
    assert side.end_reason == "drain-cut-timeout" and source.end_reason == "drain-cut-timeout"
    with pytest.raises(SourceCancelled):
        await primary.__anext__()
    assert primary.end_reason == "drain-cut-timeout"


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_primary_dropped_unserved_counts_as_a_client_that_left_cancel(impl: ModuleType) -> None:
    releases = Releases()
    source = impl.Pipe(chunks(3, 10, then="hang"), Owner(), on_release=releases)
    primary, side = tee(source, 2)
    side_reader = asyncio.ensure_future(drain_outcome(side))
    await settle()
    del primary  # the handler raised before its response started: nobody holds the primary any more
    gc.collect()
    state, _ = await releases.wait(1)
    got, error = await asyncio.wait_for(side_reader, 1)
    assert state == "cancelled" and got == []
    assert isinstance(error, SourceCancelled)
    assert side.end_reason == "client-gone" and source.end_reason == "client-gone"


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_primary_dropped_unserved_drains_within_the_bounds_counted_from_tee(impl: ModuleType) -> None:
    """A small stream still reaches the usage branch after the primary was dropped, and says so: drained."""
    source = impl.Pipe(chunks(5, 100), Owner())
    primary, usage = tee(source, 2, on_disconnect=DisconnectPolicy.drain(max_bytes=10_000, timeout=5))
    del primary
    gc.collect()
    got = await asyncio.wait_for(drain(usage), 2)
    assert got == [piece(i, 100) for i in range(5)]
    assert usage.end_reason == "drained" and source.end_reason == "drained"


@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_primary_dropped_unserved_drain_stops_at_the_byte_bound(impl: ModuleType) -> None:
    source = impl.Pipe(chunks(1000, 100), Owner())
    primary, usage = tee(source, 2, on_disconnect=DisconnectPolicy.drain(max_bytes=1000, timeout=5))
    del primary
    gc.collect()
    got, error = await asyncio.wait_for(drain_outcome(usage), 2)
    assert isinstance(error, SourceCancelled) and "byte bound" in str(error)
    assert sum(len(chunk) for chunk in got) <= 1000
    assert usage.end_reason == "drain-cut-max-bytes" and source.end_reason == "drain-cut-max-bytes"


async def test_the_time_bound_from_birth_stops_once_the_primary_is_served(impl: ModuleType) -> None:
    primary, side = tee(
        impl.Pipe(chunks(20, 10, delay=0.02)), 2, on_disconnect=DisconnectPolicy.drain(max_bytes=1 << 20, timeout=0.1)
    )
    results = await asyncio.gather(drain(primary), drain(side))
    assert [len(result) for result in results] == [20, 20], "a served primary must not be cut by the birth clock"
    assert primary.end_reason == side.end_reason == "complete"


# -- how each branch ended ---------------------------------------------------------------------------------


async def test_branch_end_reasons_tell_client_gone_drained_and_detached(impl: ModuleType) -> None:
    # The primary left under cancel: the secondary was cut because its client went.
    primary, side = tee(impl.Pipe(chunks(3, 10, then="hang")), 2)
    side_reader = asyncio.ensure_future(drain_outcome(side))
    await primary.__anext__()
    primary.cancel("client-gone")
    await asyncio.wait_for(side_reader, 1)
    assert (primary.end_reason, side.end_reason) == ("client-gone", "client-gone")
    # The primary left under drain and the upstream ended: drained.
    primary, side = tee(impl.Pipe(chunks(5, 10)), 2, on_disconnect=DisconnectPolicy.drain(max_bytes=1000, timeout=5))
    side_reader = asyncio.ensure_future(drain(side))
    await primary.__anext__()
    await primary.aclose("client-gone")
    assert len(await asyncio.wait_for(side_reader, 1)) == 5
    assert side.end_reason == "drained"
    # A secondary nobody reads falls behind: detached, while the primary completes.
    primary, idle = tee(impl.Pipe(chunks(50, 100)), 2, max_buffer=500)
    assert len(await drain(primary)) == 50
    await drain_outcome(idle)
    assert (primary.end_reason, idle.end_reason) == ("complete", "detached")
    # An upstream error is one for every branch.
    primary, side = tee(impl.Pipe(chunks(2, 10, then="fail")), 2)
    await asyncio.gather(drain_outcome(primary), drain_outcome(side))
    assert (primary.end_reason, side.end_reason) == ("upstream-error", "upstream-error")


async def test_the_tee_takes_the_policy_of_the_pipe_it_splits(impl: ModuleType) -> None:
    policy = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=5)
    source = impl.Pipe(chunks(5, 10), on_disconnect=policy)
    primary, usage = tee(source, 2)
    assert primary.on_disconnect.mode == "cancel", "a sink serving the primary cancels it; the tee drains"
    usage_reader = asyncio.ensure_future(drain(usage))
    await primary.__anext__()
    await primary.aclose()
    assert len(await asyncio.wait_for(usage_reader, 2)) == 5
    assert usage.end_reason == "drained"
