"""Seeded fault injection through the proxy: nothing lost, nothing leaked, nothing hung.

Each seed draws one scenario (``_chaos.scenario_for``): the chaos client and the chaos origin each may
reset, half-close, stall past a timeout, drip, cut a body at a random offset, lie about chunk sizes or
answer early. The normal run covers ``FASTPIPE_CHAOS_RUNS`` seeds (default 300, split over the slices
below); ``make fuzz`` raises it. A failure lists each failing seed with its scenario and the command that
replays it (``FASTPIPE_CHAOS_SEEDS=...``).
"""

from __future__ import annotations

import os

import pytest

from ._harness import chaos_seeds, run_chaos

SLICES = 4
SEEDS = chaos_seeds(300)
REPLAY = bool(os.environ.get("FASTPIPE_CHAOS_SEEDS"))  # a replay runs its seeds as given, in one slice


@pytest.mark.both_loops
@pytest.mark.parametrize("part", range(SLICES), ids=lambda part: f"slice{part}")
async def test_every_seeded_fault_ends_exact_visibly_incomplete_or_5xx_and_leaks_nothing(part: int) -> None:
    seeds = (SEEDS if part == 0 else []) if REPLAY else SEEDS[part::SLICES]
    if not seeds:
        pytest.skip("a replay runs all its seeds in slice0")
    report = await run_chaos(seeds)
    assert not report.failed, "\n" + report.explain(__file__)
    assert sum(report.endings.values()) == len(seeds), report.endings
    if not REPLAY:
        # The schedule really exercised the outcomes it judges (a run where everything came back exact, or
        # nothing did, would not be testing faults).
        assert report.endings.get("complete", 0) > len(seeds) // 3, report.endings
        assert len(report.endings) >= 3, report.endings
