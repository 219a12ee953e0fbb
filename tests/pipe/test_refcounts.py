"""Reference counts: after every terminal path, owner, chunks and callbacks hold exactly the references
they held before (the compiled twin's hand-written reference handling is the main suspect)."""

from __future__ import annotations

import gc
import sys
from types import ModuleType
from typing import Any

import pytest

from ._endings import ENDINGS, Ending
from ._support import BareSource, Owner, frozen_heap, unique_chunks

ROUNDS = 3


def _counts(objects: list[Any]) -> list[int]:
    return [sys.getrefcount(item) for item in objects]


@pytest.mark.parametrize("ending", ENDINGS, ids=[ending.name for ending in ENDINGS])
async def test_refcounts_return_to_their_start_after_each_terminal_path(impl: ModuleType, ending: Ending) -> None:
    owner = Owner()
    chunks: list[Any] = [*unique_chunks(2), bytearray(b"shared buffer"), memoryview(b"a view of bytes")]
    releases: list[str] = []

    def on_release(pipe: Any) -> None:
        releases.append(pipe.state)

    tracked = [owner, on_release, *chunks]
    with frozen_heap():
        before = _counts(tracked)
        for _ in range(ROUNDS):
            pipe = await ending.run(impl, owner, chunks, on_release)
            gc.collect()
            # A finished pipe holds nothing of the owner's; an errored one may keep its exception (and
            # the frames that raised it), so chunks are compared once the pipe is gone.
            after = _counts(tracked)
            assert after[0] == before[0], "the finished pipe still references the owner"
            if ending.final_state != "errored":
                assert after[2:] == before[2:], "the finished pipe still references a chunk"
            del pipe
        gc.collect()
        after = _counts(tracked)
    assert after == before
    assert releases == [ending.final_state] * ROUNDS


async def test_refcounts_return_after_a_pipe_is_dropped_unopened(impl: ModuleType) -> None:
    owner = Owner()
    source = BareSource([b"x"])
    with frozen_heap():
        before = _counts([owner, source])
        for _ in range(ROUNDS):
            impl.Pipe(source, owner)  # idle and dropped at once: no warning, nothing kept
        gc.collect()
        after = _counts([owner, source])
    assert after == before
