"""Leak check: 100,000 pipes through every terminal path, in a fresh interpreter, must not grow memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ._endings import ENDINGS

TESTS_DIR = Path(__file__).resolve().parent.parent
PIPES_PER_BATCH = 33_334  # warm-up + two measured batches: just over 100,000 pipes
# One leaked object per pipe on a single path would add about PIPES_PER_BATCH / len(ENDINGS) objects
# (over 1,700) between the measured batches; bounded caches settle during the warm-up.
OBJECT_TOLERANCE = 50
BYTES_TOLERANCE = 32 * 1024


def _run_worker(module: str, per_batch: int, *extra: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "tests.pipe._leak_worker", module, str(per_batch), *extra],
        cwd=TESTS_DIR.parent,  # the project root: tests/ itself would shadow the stdlib http package
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warning, no unraisable exception
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _growth(report: dict[str, Any]) -> tuple[int, int]:
    """Objects and traced bytes gained between the two measured batches."""
    objects, traced = report["objects"], report["traced_bytes"]
    return objects[2] - objects[1], traced[2] - traced[1]


def test_every_terminal_path_leaves_no_memory_behind_over_100k_pipes(impl: ModuleType) -> None:
    report = _run_worker(impl.__name__, PIPES_PER_BATCH)
    assert report["pipes"] == 3 * PIPES_PER_BATCH
    assert report["releases"] == report["pipes"], "on_release was not called exactly once per pipe"
    assert report["wrong_states"] == 0
    assert report["loop_errors"] == 0
    objects, traced = _growth(report)
    assert objects <= OBJECT_TOLERANCE, report
    assert traced <= BYTES_TOLERANCE, report


def test_the_leak_check_notices_one_leaked_object_per_pipe() -> None:
    # Same worker and thresholds, with one small list kept per pipe: it must be caught.
    per_batch = 60 * len(ENDINGS)
    report = _run_worker("fastpipe._pipe_py", per_batch, "--leak")
    objects, traced = _growth(report)
    assert objects > OBJECT_TOLERANCE
    assert traced > BYTES_TOLERANCE
