"""``make bench-proxy-quick`` end to end, briefly: every target starts, serves, and gets its ratio to the relay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO_ROOT

TARGETS = {"bare relay", "fastpipe", "fastpipe copy", "fastpipe-config", "fastpipe-record", "fastpipe-metrics"}


def test_every_target_is_measured_and_compared_with_the_relay(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    argv = [sys.executable, "benchmarks/proxy_quick.py", "--seconds", "0.3", "--repeat", "1", "--copy"]
    done = subprocess.run(
        [*argv, "--only", "fastpipe-config", "fastpipe-record", "fastpipe-metrics", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == TARGETS
    for name, row in report["results"].items():
        assert row["rps"] > 0 and row["cpu_us_per_request"] > 0, name
        assert row["ratio_to_relay"] > 0, name
    assert report["results"]["bare relay"]["ratio_to_relay"] == 1.0
    assert report["metrics_counted"] and report["metrics_counted"] > 0  # the metrics target counted its exchanges
    assert "x the relay" in done.stdout and "zero-copy / copy:" in done.stdout
