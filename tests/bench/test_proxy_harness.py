"""The proxy harness end to end, in its smallest mode: real origin, real peers, real load, real files out.

The first run needs nothing outside the venv (Python origin, Python load client, bare relay and no proxy).
The second needs nginx and wrk, as the full harness does, and is skipped with the reason when either is
missing (``apt-get install nginx wrk``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_harness(tmp_path: Path, *args: str, timeout: float) -> tuple[dict[str, Any], str]:
    outputs = ["--json", str(tmp_path / "r.json"), "--chart", str(tmp_path / "r.png")]
    outputs += ["--markdown", str(tmp_path / "r.md")]
    common = ["--runs", "1", "--duration", "1", "--warmup", "0.2", "--retries", "0", "--quiet-wait", "0"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.proxy", *common, *outputs, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    chart = (tmp_path / "r.png").read_bytes()
    assert chart.startswith(PNG_MAGIC) and len(chart) > 10_000
    markdown = (tmp_path / "r.md").read_text()
    assert markdown in done.stdout  # the same report on stdout and on disk
    return json.loads((tmp_path / "r.json").read_text()), done.stderr


def cells_by_key(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(cell["peer"], cell["workload"]): cell for cell in data["results"]}


def test_install_free_run_measures_the_relay_against_no_proxy(tmp_path: Path) -> None:
    data, progress = run_harness(
        tmp_path,
        "--no-wrk",
        "--no-nginx",
        "--only", "none", "relay",
        "--cells", "small,sse,idle",
        "--idle-connections", "40",
        "--connections", "8",
        "--sse-events", "10",
        timeout=60,
    )  # fmt: skip
    cells = cells_by_key(data)
    assert sorted(cells) == sorted((p, w) for p in ("none", "relay") for w in ("small", "sse", "idle"))
    assert all(cell["error"] is None for cell in cells.values()), [c["error"] for c in cells.values()]
    assert "[6/6] run 1/1 idle" in progress  # a progress line per cell
    for peer in ("none", "relay"):
        small = cells[(peer, "small")]
        assert small["generator"] == "python" and small["requests"] > 50 and small["errors"] == 0
        assert small["latency_us"]["p99"] >= small["latency_us"]["p50"] > 0
        sse = cells[(peer, "sse")]
        assert sse["requests"] > 5 and sse["event_delay_us"]["p50"] > 0 and sse["event_delay_alone_us"]["p50"] > 0
        assert cells[(peer, "idle")]["idle_established"] == 40
    # No proxy costs nothing on the proxy core; the relay costs something, and a plausible amount.
    assert cells[("none", "small")]["cost"] is None
    assert 1.0 < cells[("relay", "small")]["cost"] < 5_000.0  # µs per request
    assert cells[("relay", "sse")]["cost"] > 0
    rss = cells[("relay", "idle")]["rss_kib_per_stream"]
    assert rss is not None and 0 <= rss < 200
    assert data["meta"]["origin"].startswith("Python") and "Python client" in data["meta"]["generator"]
    markdown = (tmp_path / "r.md").read_text()
    assert "| bare uvloop TCP relay |" in markdown and "| no proxy (client to origin) |" in markdown
    assert "**CPU cost of the proxy**" in markdown and "**Ratios**" in markdown


MISSING = [name for name in ("nginx", "wrk") if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]


@pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (apt-get install nginx wrk)")
def test_nginx_peer_under_wrk_against_no_proxy(tmp_path: Path) -> None:
    data, _ = run_harness(tmp_path, "--only", "none", "nginx", "--cells", "small,bulk", timeout=60)
    cells = cells_by_key(data)
    assert all(cell["error"] is None for cell in cells.values()), [c["error"] for c in cells.values()]
    assert data["meta"]["origin"].startswith("nginx") and data["meta"]["generator"].startswith("wrk")
    small, bulk = cells[("nginx", "small")], cells[("nginx", "bulk")]
    assert small["generator"] == "wrk" and small["requests"] > 500 and small["errors"] == 0
    assert 1.0 < small["cost"] < 1_000.0  # µs per request
    assert bulk["bytes"] >= 16 * 1024 * 1024 and 0.01 < bulk["cost"] < 100.0  # s per GiB
    nginx = data["summary"]["nginx"]
    assert nginx["small_cost"]["median"] == pytest.approx(small["cost"])
    markdown = (tmp_path / "r.md").read_text()
    assert "| nginx " in markdown and "proxy_pass |" in markdown


def processes_tagged(tag: str) -> list[int]:
    """Live processes whose environment carries ``tag`` (every child inherits the harness's environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if tag.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_ctrl_c_stops_every_process_and_still_writes_the_partial_report(tmp_path: Path) -> None:
    tag = f"BENCH_TEST_TAG={uuid.uuid4().hex}"
    env = dict(os.environ, BENCH_TEST_TAG=tag.split("=", 1)[1])
    argv = [sys.executable, "-m", "benchmarks.proxy", "--no-wrk", "--no-nginx", "--only", "relay", "--cells", "small"]
    argv += ["--runs", "1", "--duration", "20", "--warmup", "0", "--quiet-wait", "0", "--retries", "0"]
    argv += [
        "--json",
        str(tmp_path / "r.json"),
        "--chart",
        str(tmp_path / "r.png"),
        "--markdown",
        str(tmp_path / "r.md"),
    ]
    harness = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert harness.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the cell is under way once its progress line is out
            line = harness.stderr.readline()
            if "small relay" in line or not line:
                break
        time.sleep(1.0)  # origin, relay and load client are running now
        running = processes_tagged(tag)
        assert len(running) >= 3, running  # harness, origin, relay (and the load client)
        harness.send_signal(signal.SIGINT)
        _, errors = harness.communicate(timeout=20)
    finally:
        if harness.poll() is None:
            harness.kill()
    assert harness.returncode == 130, errors[-2000:]
    assert processes_tagged(tag) == []
    assert "- interrupted: partial results" in (tmp_path / "r.md").read_text()
