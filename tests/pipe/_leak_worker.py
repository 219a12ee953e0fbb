"""Run many pipes through every terminal path and report whether memory grows (run in a subprocess).

Usage: ``python -m pipe._leak_worker MODULE PIPES_PER_BATCH [--leak]`` from the ``tests`` directory.
One warm-up batch fills caches and free lists (the compiled twin keeps a bounded free list of its
awaitables); then two more batches of the same size are measured, each after a full
collection: the count of objects the collector tracks and tracemalloc's current size. A pipe that leaks
even one small object on one path shows up as growth between the two measured batches. ``--leak`` keeps
one small object per pipe on purpose, to prove the measurement notices.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import sys
import time
import tracemalloc
from types import ModuleType
from typing import Any

from ._endings import ENDINGS
from ._support import Owner, unique_chunks


async def _batch(impl: ModuleType, pipes: int, counters: dict[str, int], kept: list[object] | None) -> None:
    chunks = unique_chunks(3)
    endings = [ending.run for ending in ENDINGS]
    expected = [ending.final_state for ending in ENDINGS]

    def on_release(pipe: Any) -> None:
        counters["releases"] += 1

    for index in range(pipes):
        which = index % len(endings)
        pipe = await endings[which](impl, Owner(), chunks, on_release)
        if pipe.state != expected[which]:
            counters["wrong_states"] += 1
        if kept is not None:
            kept.append([])  # tracked by the collector and by tracemalloc
    counters["pipes"] += pipes


def _measure() -> tuple[int, int]:
    gc.collect()
    gc.collect()
    return len(gc.get_objects()), tracemalloc.get_traced_memory()[0]


def main() -> None:
    module_name, per_batch = sys.argv[1], int(sys.argv[2])
    inject_leak = "--leak" in sys.argv[3:]
    impl = importlib.import_module(module_name)
    counters = {"pipes": 0, "releases": 0, "wrong_states": 0, "loop_errors": 0}
    kept: list[object] | None = [] if inject_leak else None

    def count_loop_error(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        counters["loop_errors"] += 1

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(count_loop_error)
    started = time.perf_counter()
    try:
        loop.run_until_complete(_batch(impl, per_batch, counters, kept))  # warm-up: caches, free lists
        tracemalloc.start()
        samples = [_measure()]
        for _ in range(2):
            loop.run_until_complete(_batch(impl, per_batch, counters, kept))
            samples.append(_measure())
    finally:
        loop.close()
    report = {
        "module": module_name,
        "objects": [sample[0] for sample in samples],
        "traced_bytes": [sample[1] for sample in samples],
        "seconds": round(time.perf_counter() - started, 2),
        **counters,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
