"""`fastpipe demo hazard`, the first half of the main job, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("no_extensions", ["0", "1"], ids=["compiled", "twin"])
def test_hazard_demo_shows_the_naive_gateway_losing_data_and_the_pipe_losing_none(no_extensions: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastpipe", "demo", "hazard", "--size", "300000", "--chunk", "3000"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FASTPIPE_NO_EXTENSIONS": no_extensions},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines() if line.startswith(("naive", "fastpipe"))}
    naive = rows["naive passthrough"]
    piped = next(line for name, line in rows.items() if name.startswith("fastpipe.Pipe"))
    assert "LOST" in naive and "MISMATCH" in naive and "ended cleanly" in naive
    assert piped.split()[-4:] == ["300,000", "300,000", "match", "complete"]
    assert ("pure Python" in piped) == (no_extensions == "1")
    assert "Traceback" not in result.stderr


def test_hazard_demo_refuses_nonsense_sizes() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastpipe", "demo", "hazard", "--size", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--size must be >= 1" in result.stderr
