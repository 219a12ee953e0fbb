"""Run the proxy harness: ``python -m benchmarks.proxy [--quick] [--only PEER ...] [--cells small,bulk,...]``.

Starts the origins (nginx static files, over TLS too for the TLS cells; a Python SSE origin; a WebSocket echo
origin for the WebSocket cells) and, cell after cell, each peer pinned alone on
the proxy core, drives it from the load core, and prints a progress line per cell; at the end a markdown table
of absolute figures and ratios (stdout and ``--markdown``), the raw results (``--json``) and a chart (``--chart``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import cpu, load, nginx, origin, report
from .cells import DEFAULT_CELLS, WORKLOADS, CellResult, Settings, Workload, run_cell
from .peers import PEERS
from .processes import REPO_ROOT, install_cleanup, raise_fd_limit, stop_all

FD_HEADROOM = 400
RESULTS = REPO_ROOT / "benchmarks" / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 run, 2 s cells, 1,000 idle streams, no retries, 1 s quiet wait: a smoke test of every cell",
    )
    parser.add_argument("--runs", type=int, help="runs of every cell (default 3; quick 1)")
    parser.add_argument("--duration", type=float, help="seconds measured per cell (default 8; quick 2)")
    parser.add_argument("--warmup", type=float, help="seconds of load before each measurement (default 1; quick 0.5)")
    parser.add_argument("--cells", default=DEFAULT_CELLS, help=f"workloads, comma-separated (default {DEFAULT_CELLS})")
    parser.add_argument("--only", nargs="+", metavar="PEER", help=f"peers to run, of: {' '.join(PEERS)}")
    parser.add_argument("--skip", nargs="+", metavar="PEER", default=[], help="peers to leave out")
    parser.add_argument("--idle-connections", type=int, help="held streams in the idle cell (default 10000)")
    parser.add_argument("--idle-runs", type=int, default=1, help="runs that include the idle cell (1)")
    parser.add_argument("--connections", type=int, default=64, help="connections for small, sse, ws-small (64)")
    parser.add_argument("--bulk-connections", type=int, default=4, help="connections for bulk and ws-bulk (4)")
    parser.add_argument("--ws-message-size", type=int, default=1024, help="bytes per ws-small message (1024)")
    parser.add_argument("--ws-bulk-message-size", type=int, default=1 << 20, help="bytes per ws-bulk message (1 MiB)")
    parser.add_argument("--sse-events", type=int, default=100, help="events per SSE stream (100)")
    parser.add_argument("--sse-interval-ms", type=float, default=1.0, help="ms between events; 0 = burst (1)")
    parser.add_argument("--sse-event-size", type=int, default=100, help="bytes per event (100)")
    parser.add_argument("--retries", type=int, help="extra attempts of a contaminated cell (default 2; quick 0)")
    parser.add_argument(
        "--quiet-wait", type=float, help="max seconds to wait for a quiet box before a cell (5; quick 1)"
    )
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load client even if wrk is here")
    parser.add_argument("--no-nginx", action="store_true", help="Python origin for static files; skip the nginx peer")
    parser.add_argument("--json", type=Path, default=RESULTS / "proxy.json", help="raw results and summary")
    parser.add_argument("--chart", type=Path, default=RESULTS / "proxy.png", help="PNG chart")
    parser.add_argument("--markdown", type=Path, default=RESULTS / "proxy.md", help="the report as markdown")
    parser.add_argument("--keep-workdir", action="store_true", help="keep configs and logs of the run")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "runs": 1 if quick else 3,
        "duration": 2.0 if quick else 8.0,
        "warmup": 0.5 if quick else 1.0,
        "idle_connections": 1000 if quick else 10_000,
        "retries": 0 if quick else 2,  # a smoke run reports contamination; it does not wait it out
        "quiet_wait": 1.0 if quick else 5.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = [w for w in args.cells.split(",") if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown cells {unknown}; choose from {', '.join(WORKLOADS)}")
    for name in [*(args.only or []), *args.skip]:
        if name not in PEERS:
            parser.error(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    return args


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model}, {os.cpu_count()} vCPU, Linux {platform.release()}, "
        f"Python {platform.python_version()}, nginx {nginx.version()}, wrk {load.wrk_version()}"
    )


def fastpipe_revision() -> str:
    """The commit the fastpipe peers ran from, marked when the source tree had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes in src/" if dirty else "")


def describe_origins(use_nginx: bool, workloads: list[Workload]) -> str:
    static = "nginx " + nginx.version() if use_nginx else "Python"
    text = f"{static} (static), Python (SSE)"
    if any(w.origin == "tls" for w in workloads):
        text += f"; TLS cells: {static} over TLS 1.3, certificate from a throwaway CA, verified by the proxies"
    if any(w.origin == "ws" for w in workloads):
        text += "; WebSocket cells: a hand-written uvloop echo origin"
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_cleanup()
    plan = cpu.plan_cores()
    if plan.load is not None:
        os.sched_setaffinity(0, {plan.load})  # the harness itself stays off the proxy core
    use_nginx = not args.no_nginx and nginx.binary() is not None
    use_wrk = not args.no_wrk and load.wrk_binary() is not None
    fds = raise_fd_limit(4 * args.idle_connections + 1024)
    notes: list[str] = []
    # The proxy holds two sockets per stream, plus its own files and pooled connections (fastpipe: ~150).
    if fds < 2 * args.idle_connections + FD_HEADROOM:
        args.idle_connections = max(100, (fds - FD_HEADROOM) // 2)
        notes.append(f"open-file limit {fds} (hard): idle cell reduced to {args.idle_connections:,} streams")
    if not use_wrk:
        notes.append(
            "load from the Python client (wrk " + ("not installed" if not load.wrk_binary() else "disabled") + "): "
            "throughput shows the generator's limit; CPU costs stay valid"
        )
    if plan.proxy is None:
        notes.append("one core only: no pinning, CPU cost is the proxy's process time")

    peers = [PEERS[name] for name in (args.only or PEERS) if name not in args.skip]
    skipped: dict[str, str] = {}
    runnable = []
    for peer in peers:
        reason = "--no-nginx" if (peer.name == "nginx" and args.no_nginx) else peer.unavailable()
        if reason:
            skipped[peer.name] = reason
            print(f"skip {peer.name}: {reason}", file=sys.stderr)
        else:
            runnable.append(peer)
    workloads = [WORKLOADS[name] for name in args.cells.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="fastpipe-bench-"))
    (workdir / "logs").mkdir()
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        retries=args.retries,
        quiet_wait=args.quiet_wait,
        connections=args.connections,
        bulk_connections=args.bulk_connections,
        sse_events=args.sse_events,
        sse_interval_ms=args.sse_interval_ms,
        sse_event_size=args.sse_event_size,
        idle_connections=args.idle_connections,
        use_wrk=use_wrk,
        plan=plan,
        workdir=workdir,
        ws_message_size=args.ws_message_size,
        ws_bulk_message_size=args.ws_bulk_message_size,
    )
    results: list[CellResult] = []
    revision = fastpipe_revision()  # before the run: the tree may change while it goes on
    started = time.monotonic()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    interrupted = False
    try:
        origins = origin.start(
            workdir,
            cpus=plan.load_cpus,
            use_nginx=use_nginx,
            tls=any(w.origin == "tls" for w in workloads),
            ws=any(w.origin == "ws" for w in workloads),
        )
        total = sum(
            sum(1 for peer in runnable if peer.takes(workload.name, workload.kind))
            for run in range(1, args.runs + 1)
            for workload in workloads
            if workload.name != "idle" or run <= args.idle_runs
        )
        index = 0
        for run in range(1, args.runs + 1):
            for workload in workloads:
                if workload.name == "idle" and run > args.idle_runs:
                    continue
                shift = (run - 1) % max(1, len(runnable))
                for peer in runnable[shift:] + runnable[:shift]:  # rotate so no peer always goes first
                    if not peer.takes(workload.name, workload.kind):
                        continue
                    index += 1
                    head = f"[{index}/{total}] run {run}/{args.runs} {workload.name:5} {peer.name:14}"
                    print(head + " ...", file=sys.stderr, flush=True)

                    def announce(message: str, head: str = head) -> None:
                        print(f"{head} {message}", file=sys.stderr, flush=True)

                    cell = run_cell(peer, workload, origins, settings, run, announce)
                    results.append(cell)
                    took = time.monotonic() - started
                    print(f"{head} {cell.summary()}  [{took:.0f} s]", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted: partial results")
        print("\ninterrupted, stopping everything", file=sys.stderr)
    finally:
        stop_all()
        if args.keep_workdir:
            print(f"configs and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    figures = report.summarize(results)
    pinning = (
        f"proxy alone on CPU {plan.proxy}, origin and load generator on CPU {plan.load}"
        if plan.proxy is not None
        else "no pinning"
    )
    meta: dict[str, Any] = {
        "date": date,
        "machine": machine(),
        "fastpipe": revision,
        "pinning": pinning,
        "origin": describe_origins(use_nginx, workloads),
        "generator": ("wrk, 1 thread" if use_wrk else "Python client")
        + ("; WebSocket: Python raw-frame echo client" if any(w.origin == "ws" for w in workloads) else ""),
        "runs": args.runs,
        "duration": args.duration,
        "skipped": skipped,
        "notes": notes,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    text = report.markdown(figures, meta)
    print(text)
    for path in (args.json, args.chart, args.markdown):
        path.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text)
    summary = {name: asdict(fig) for name, fig in figures.items()}
    targets = [asdict(t) | {"verdict": t.verdict} for t in report.targets(figures)]
    payload = {"meta": meta, "results": [c.to_json() for c in results], "summary": summary, "targets": targets}
    args.json.write_text(json.dumps(payload, indent=1, default=str))
    if figures:
        report.chart(figures, meta, args.chart)
    print(f"wrote {args.markdown}, {args.json}" + (f", {args.chart}" if figures else ""), file=sys.stderr)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
