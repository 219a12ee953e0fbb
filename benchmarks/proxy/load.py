"""Drive the load: wrk (with a Lua script that reports latency percentiles as JSON) or the Python clients.

wrk is the generator whenever it is installed: one thread on the load core spends a few µs per request, so
the proxy, not the generator, is what a cell measures. Without wrk the Python clients take its place (about
ten times the CPU per request, so throughput figures then show the generator's limit: the report says which
generator ran). The SSE latency probe, the idle-streams holder and the WebSocket echo client are always the
Python clients.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .processes import Managed, spawn

WRK_LUA = """\
-- Report the whole summary as one JSON line, so the harness reads numbers, not wrk's human output.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"bytes":%d,"duration_us":%d,"errors":%d,"status_errors":%d,' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\\n',
    summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
"""


@dataclass
class LoadResult:
    generator: str  # "wrk" or "python"
    requests: int  # completed with status 200
    bytes: int
    errors: int
    duration_s: float
    latency_us: dict[str, float] = field(default_factory=dict)
    events: int = 0
    event_delay_us: dict[str, float] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


class LoadError(RuntimeError):
    """A load generator failed or printed no result."""


def wrk_binary() -> str | None:
    return shutil.which("wrk")


@cache
def wrk_version() -> str:
    path = wrk_binary()
    if path is None:
        return "absent"
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def _collect(process: Managed, timeout: float) -> str:
    try:
        process.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        process.stop()
        raise LoadError(f"{process.name} did not finish within {timeout:.0f} s") from exc
    process.stop()
    assert process.log_path is not None
    return process.log_path.read_text(errors="replace")


def run_wrk(url: str, connections: int, duration: float, *, workdir: Path, cpus: frozenset[int] | None) -> LoadResult:
    path = wrk_binary()
    if path is None:
        raise LoadError("wrk is not installed")
    script = workdir / "report.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    seconds = max(1, math.ceil(duration))  # wrk takes whole seconds
    log = workdir / "logs" / "wrk.log"
    log.unlink(missing_ok=True)
    argv = [path, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(script), url]
    process = spawn("wrk", argv, log_dir=workdir / "logs", cpus=cpus)
    output = _collect(process, seconds + 60)
    line = next((line for line in output.splitlines() if line.startswith("WRKJSON ")), None)
    if line is None:
        raise LoadError(f"wrk printed no result: {output[-800:]}")
    data = json.loads(line.removeprefix("WRKJSON "))
    return LoadResult(
        generator="wrk",
        requests=int(data["requests"]) - int(data["status_errors"]),
        bytes=int(data["bytes"]),
        errors=int(data["errors"]),
        duration_s=int(data["duration_us"]) / 1e6,
        latency_us={name: float(value) for name, value in data["latency_us"].items()},
    )


def start_client(
    mode: str,
    url: str,
    connections: int,
    duration: float,
    *,
    workdir: Path,
    cpus: frozenset[int] | None,
    name: str,
    extra: Sequence[str] = (),
) -> Managed:
    """Start a Python client (``clients.py``); its JSON result is read by ``finish_client``."""
    log = workdir / "logs" / f"{name}.log"
    log.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "benchmarks.proxy.clients", mode, "--url", url]
    argv += ["--connections", str(connections), "--duration", str(duration), *extra]
    return spawn(name, argv, log_dir=workdir / "logs", cpus=cpus)


def finish_client(process: Managed, duration: float) -> LoadResult:
    output = _collect(process, duration + 60)
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if not lines:
        raise LoadError(f"{process.name} printed no result: {output[-800:]}")
    data = json.loads(lines[-1])
    return LoadResult(
        generator="python",
        requests=int(data["requests"]),
        bytes=int(data["bytes"]),
        errors=int(data["errors"]),
        duration_s=float(data["duration_s"]),
        latency_us=data["latency_us"],
        events=int(data.get("events", 0)),
        event_delay_us=data.get("event_delay_us", {}),
    )


def run_http(
    url: str, connections: int, duration: float, *, workdir: Path, cpus: frozenset[int] | None, use_wrk: bool
) -> LoadResult:
    if use_wrk:
        return run_wrk(url, connections, duration, workdir=workdir, cpus=cpus)
    client = start_client("http", url, connections, duration, workdir=workdir, cpus=cpus, name="client-http")
    return finish_client(client, duration)


def run_ws(
    url: str, connections: int, duration: float, size: int, *, workdir: Path, cpus: frozenset[int] | None
) -> LoadResult:
    """WebSocket echo in a closed loop (the Python raw-frame client; wrk speaks no WebSocket)."""
    extra = ("--message-size", str(size))
    client = start_client("ws", url, connections, duration, workdir=workdir, cpus=cpus, name="client-ws", extra=extra)
    return finish_client(client, duration)


@dataclass
class IdleStreams:
    """The idle-streams holder while it holds its connections open."""

    process: Managed
    established: int
    failed: int

    def release(self) -> None:
        stdin = self.process.popen.stdin
        if stdin is not None:
            try:
                stdin.write(b"close\n")
                stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.process.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.process.stop()


def hold_idle_streams(
    url: str, connections: int, *, workdir: Path, cpus: frozenset[int] | None, timeout: float
) -> IdleStreams:
    """Open ``connections`` held SSE streams and return once all are established or failed."""
    argv = [sys.executable, "-m", "benchmarks.proxy.clients", "idle", "--url", url]
    argv += ["--connections", str(connections), "--timeout", str(timeout)]
    process = spawn(
        "client-idle", argv, log_dir=workdir / "logs", cpus=cpus, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.popen.stdout is not None
    line = process.popen.stdout.readline().decode(errors="replace")  # the holder's own timeout bounds this
    if not line.startswith("READY "):
        process.stop()
        raise LoadError(f"idle-streams holder failed: {line!r} {process.log_tail()}")
    _, ok, failed = line.split()
    return IdleStreams(process, int(ok), int(failed))
