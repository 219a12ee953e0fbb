"""One cell = one peer under one workload for one run: start the peer, warm it up, measure, stop it.

Workloads:
  small  1 KiB responses, keep-alive, 64 connections: requests/s, p99 latency, CPU µs per request
  bulk   16 MiB responses, 4 connections: MiB/s, CPU seconds per GiB
  sse    paced SSE streams (100 events, 1 ms apart) on 64 connections, plus one probe connection that measures
         each event's delay (the origin's send time to the client's arrival time), once alone and once under
         the load: streams/s, per-event latency, CPU µs per stream
  idle   N held SSE streams (head and one event, then silence): proxy RSS per stream
  small-tls, bulk-tls   small and bulk with the origin reached over TLS (the client still speaks plaintext
         to the proxy; the proxy verifies the origin's certificate and keeps its TLS connections alive)
  ws-small  WebSocket echo through the proxy: 64 connections, closed loop, 1 KiB text messages:
         messages/s, round-trip latency, CPU µs per echoed message (one frame each way)
  ws-bulk   WebSocket echo, 4 connections, 1 MiB binary messages: MiB/s and CPU seconds per GiB, counting the
         payload both ways (an echoed 1 MiB message is 2 MiB through the proxy)

A contaminated window (other load on the box) is retried; the cleanest attempt is kept and flagged if needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import cpu, load
from .origin import BULK_PATH, HOST, SMALL_PATH, WS_PATH, Origins
from .peers import Peer, RunningPeer
from .processes import Managed, StartError, wait_http_ready

PROBE_ALONE_S = 1.5
IDLE_OPEN_S = 30.0  # plus 5 ms per stream: a peer slower than that to open streams reports how many it held
GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Settings:
    duration: float
    warmup: float
    retries: int
    quiet_wait: float
    connections: int
    bulk_connections: int
    sse_events: int
    sse_interval_ms: float
    sse_event_size: int
    idle_connections: int
    use_wrk: bool
    plan: cpu.CorePlan
    workdir: Path
    ws_message_size: int = 1024
    ws_bulk_message_size: int = MIB


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    origin: str  # which origin: "static", "stream", "tls", "ws" (Origins.upstream)
    metric: str  # what its cost is per: "request", "gib", "stream", "idle", "message"
    kind: str = "http"  # which peers take part (Peer.kinds): "http", "tls", "ws"

    @property
    def bulk(self) -> bool:
        """Few connections, big bodies or messages."""
        return self.metric == "gib"


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("small", "1 KiB responses, keep-alive", "static", "request"),
        Workload("bulk", "16 MiB responses", "static", "gib"),
        Workload("sse", "paced SSE streams", "stream", "stream"),
        Workload("idle", "held idle SSE streams", "stream", "idle"),
        Workload("small-tls", "1 KiB responses from an HTTPS origin", "tls", "request", "tls"),
        Workload("bulk-tls", "16 MiB responses from an HTTPS origin", "tls", "gib", "tls"),
        Workload("ws-small", "WebSocket echo, 1 KiB messages", "ws", "message", "ws"),
        Workload("ws-bulk", "WebSocket echo, 1 MiB messages", "ws", "gib", "ws"),
    )
}
DEFAULT_CELLS = "small,bulk,sse,idle,small-tls,bulk-tls,ws-small,ws-bulk"


@dataclass
class CellResult:
    peer: str
    workload: str
    run: int
    attempt: int = 1
    generator: str = ""
    seconds: float = 0.0
    requests: int = 0
    bytes: int = 0
    errors: int = 0
    rate: float = 0.0  # requests/s (small), MiB/s (bulk, ws-bulk), streams/s (sse), messages/s (ws-small)
    latency_us: dict[str, float] = field(default_factory=dict)
    event_delay_us: dict[str, float] = field(default_factory=dict)  # the probe stream under load
    event_delay_alone_us: dict[str, float] = field(default_factory=dict)  # the probe stream alone
    proxy_cpu_s: float | None = None
    proxy_process_cpu_s: float | None = None
    cost: float | None = None  # µs per request (small), s per GiB (bulk), µs per stream (sse), µs per message
    rss_kib_per_stream: float | None = None
    idle_established: int = 0
    idle_failed: int = 0
    proxy_foreign_s: float = 0.0
    load_foreign_s: float = 0.0
    contaminated: bool = False  # the CPU figure is uncertain
    load_contaminated: bool = False  # the throughput figure is uncertain
    flags: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.error:
            return f"FAILED: {self.error[:200]}"
        parts: list[str] = []
        metric = WORKLOADS[self.workload].metric
        if metric == "request":
            parts.append(f"{self.rate:,.0f} req/s, p99 {self.latency_us.get('p99', 0) / 1000:.2f} ms")
            if self.cost is not None:
                parts.append(f"{self.cost:.1f} µs CPU/req")
        elif metric == "message":
            parts.append(f"{self.rate:,.0f} msg/s, p99 {self.latency_us.get('p99', 0) / 1000:.2f} ms")
            if self.cost is not None:
                parts.append(f"{self.cost:.1f} µs CPU/msg")
        elif metric == "gib":
            parts.append(f"{self.rate:,.0f} MiB/s")
            if self.cost is not None:
                parts.append(f"{self.cost:.2f} s CPU/GiB")
        elif metric == "stream":
            alone, loaded = self.event_delay_alone_us.get("p50"), self.event_delay_us.get("p50")
            parts.append(f"{self.rate:,.0f} streams/s")
            if alone is not None and loaded is not None:
                parts.append(f"event delay p50 {alone:.0f} µs alone, {loaded:.0f} µs loaded")
            if self.cost is not None:
                parts.append(f"{self.cost:.0f} µs CPU/stream")
        elif metric == "idle":
            parts.append(f"{self.idle_established} streams held")
            if self.rss_kib_per_stream is not None:
                parts.append(f"{self.rss_kib_per_stream:.1f} KiB RSS/stream")
        if self.errors:
            parts.append(f"{self.errors} errors")
        if self.contaminated or self.load_contaminated:
            parts.append("CONTAMINATED (" + "; ".join(self.flags) + ")")
        return ", ".join(parts)


def sse_path(settings: Settings, *, hold: bool = False) -> str:
    if hold:
        return f"/sse?n=1&hold=1&size={settings.sse_event_size}"
    return f"/sse?n={settings.sse_events}&interval_ms={settings.sse_interval_ms:g}&size={settings.sse_event_size}"


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def origin_pids(origins: Origins) -> list[int]:
    return [pid for process in origins.processes for pid in process.group_pids()]


def proxy_pids(running: RunningPeer) -> list[int]:
    return running.process.group_pids() if running.process is not None else []


def measure_load(
    peer: Peer, workload: Workload, running: RunningPeer, origins: Origins, settings: Settings, run: int
) -> CellResult:
    """Every workload but idle: warm up, then one measured window."""
    direct_tls = running.process is None and workload.origin == "tls"  # no proxy: the client speaks TLS itself
    base = f"{'https' if direct_tls else 'http'}://{HOST}:{running.port}"
    ws = workload.origin == "ws"
    if ws:
        path = WS_PATH
    else:
        path = {"request": SMALL_PATH, "gib": BULK_PATH, "stream": sse_path(settings)}[workload.metric]
    connections = settings.bulk_connections if workload.bulk else settings.connections
    size = settings.ws_bulk_message_size if workload.bulk else settings.ws_message_size
    load_cpus = settings.plan.load_cpus
    workdir = settings.workdir

    def drive(seconds: float) -> load.LoadResult:
        if ws:
            return load.run_ws(base + path, connections, seconds, size, workdir=workdir, cpus=load_cpus)
        return load.run_http(
            base + path, connections, seconds, workdir=workdir, cpus=load_cpus, use_wrk=settings.use_wrk
        )

    if settings.warmup > 0:
        drive(settings.warmup)
    unloaded_delay: dict[str, float] = {}
    if workload.metric == "stream":  # one stream alone first: the per-event delay with no queueing behind others
        alone_s = min(PROBE_ALONE_S, settings.duration)
        alone = load.start_client("sse", base + path, 1, alone_s, workdir=workdir, cpus=load_cpus, name="client-probe")
        unloaded_delay = load.finish_client(alone, alone_s).event_delay_us
    cpu.wait_idle(proxy_pids(running))  # leftovers of the warm-up must not land in the window
    probe: Managed | None = None
    if workload.metric == "stream":
        probe = load.start_client(
            "sse", base + path, 1, settings.duration, workdir=workdir, cpus=load_cpus, name="client-probe"
        )
    try:
        first = cpu.snapshot()
        result = drive(settings.duration)
        last = cpu.snapshot()  # at once: what the proxy does after the load stops is not work done
        ours = origin_pids(origins) + (probe.group_pids() if probe is not None else [])
        window = cpu.between(first, last, settings.plan, proxy_pids(running), ours)
        probe_result = load.finish_client(probe, settings.duration) if probe is not None else None
    finally:
        if probe is not None:
            probe.stop()
    cell = CellResult(peer.name, workload.name, run, generator=result.generator, seconds=result.duration_s)
    cell.requests, cell.bytes, cell.errors = result.requests, result.bytes, result.errors
    cell.latency_us = result.latency_us
    work: float
    if workload.metric in ("request", "message"):
        cell.rate = result.per_second
        work = result.requests / 1e6  # cost in µs per request or per echoed message
    elif workload.metric == "gib":
        cell.rate = result.bytes / MIB / result.duration_s
        work = result.bytes / GIB  # cost in s per GiB (WebSocket: the payload both ways)
    else:
        assert probe_result is not None
        cell.requests += probe_result.requests
        cell.errors += probe_result.errors
        cell.event_delay_us = probe_result.event_delay_us
        cell.event_delay_alone_us = unloaded_delay
        cell.rate = result.requests / result.duration_s
        # wrk stops with one stream in flight per connection, on average half relayed and not counted
        # (the Python client instead finishes its streams before it exits).
        in_flight = 0.5 * connections if result.generator == "wrk" else 0.0
        work = (cell.requests + in_flight) / 1e6  # cost in µs per stream
    apply_window(cell, window, work if running.process is not None else None)
    return cell


def apply_window(cell: CellResult, window: cpu.Window, work: float | None) -> None:
    cell.proxy_foreign_s = window.proxy_core_foreign
    cell.load_foreign_s = window.load_core_foreign
    cell.load_contaminated = window.load_contaminated
    cell.flags = window.flags()
    if work is None:  # no proxy: nothing to charge, only the load core matters
        cell.flags = [flag for flag in cell.flags if not flag.startswith("proxy core")]
        return
    cell.proxy_cpu_s = window.proxy_cpu
    cell.proxy_process_cpu_s = window.proxy_process_cpu
    cell.contaminated = window.proxy_contaminated
    cell.cost = window.proxy_cpu / work if work > 0 else None


def measure_idle(
    peer: Peer, workload: Workload, running: RunningPeer, origins: Origins, settings: Settings, run: int
) -> CellResult:
    """Hold N idle streams through the proxy; RSS growth over a warmed-up baseline, per stream."""
    cell = CellResult(peer.name, workload.name, run, generator="python")
    url = f"http://{HOST}:{running.port}{sse_path(settings, hold=True)}"
    cpus, workdir = settings.plan.load_cpus, settings.workdir
    count = settings.idle_connections
    warm = load.hold_idle_streams(url, min(200, count), workdir=workdir, cpus=cpus, timeout=60)
    warm.release()
    time.sleep(0.3)
    before = rss_kib(proxy_pids(running))
    first = cpu.snapshot()
    holder = load.hold_idle_streams(url, count, workdir=workdir, cpus=cpus, timeout=IDLE_OPEN_S + count / 200)
    try:
        time.sleep(0.5)
        after = rss_kib(proxy_pids(running))
        last = cpu.snapshot()
    finally:
        holder.release()
    window = cpu.between(first, last, settings.plan, proxy_pids(running), origin_pids(origins))
    cell.seconds = window.seconds
    cell.idle_established, cell.idle_failed = holder.established, holder.failed
    cell.errors = holder.failed
    if running.process is not None and holder.established:
        cell.rss_kib_per_stream = (after - before) / holder.established
        cell.proxy_cpu_s = window.proxy_cpu
    cell.flags = [flag for flag in window.flags() if not flag.startswith("load core")]
    return cell


def run_cell(
    peer: Peer,
    workload: Workload,
    origins: Origins,
    settings: Settings,
    run: int,
    announce: Callable[[str], None],
) -> CellResult:
    """Measure one cell, retrying contaminated attempts; a failure becomes a result with ``error`` set."""
    upstream = origins.upstream(workload.origin)
    measure = measure_idle if workload.metric == "idle" else measure_load
    best: CellResult | None = None
    for attempt in range(1, settings.retries + 2):
        cpu.wait_until_quiet(settings.plan, settings.quiet_wait)
        running: RunningPeer | None = None
        try:
            running = peer.start(upstream, workload.kind, settings.workdir, settings.plan.proxy_cpus)
            if running.process is not None:  # the origins were checked when they started
                wait_http_ready(running.process, HOST, running.port, SMALL_PATH)
            cell = measure(peer, workload, running, origins, settings, run)
        except (StartError, load.LoadError, OSError) as exc:
            return CellResult(peer.name, workload.name, run, attempt=attempt, error=f"{type(exc).__name__}: {exc}")
        finally:
            if running is not None:
                running.stop()
        cell.attempt = attempt
        if best is None or _dirt(cell) < _dirt(best):
            best = cell
        if not (cell.contaminated or cell.load_contaminated):
            break
        if attempt <= settings.retries:
            announce(f"contaminated ({'; '.join(cell.flags)}), retrying")
    assert best is not None
    return best


def _dirt(cell: CellResult) -> float:
    return cell.proxy_foreign_s + 0.5 * cell.load_foreign_s
