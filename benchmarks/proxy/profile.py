"""Where a Python peer's time goes under one workload: py-spy samples it while wrk (or the Python client) loads it.

``python -m benchmarks.proxy.profile --peer fastpipe --cell small`` starts the origins and the peer exactly as
the harness does (pinned the same way), records ``--seconds`` of samples, writes the folded stacks (for
flamegraph.pl or speedscope) and prints the lines with the most samples, by self time and inclusive. Frames
that py-spy sees as the event loop's own (``Runner.run``/``run_until_complete`` as the leaf) are uvloop's C code:
epoll, socket syscalls and callback dispatch. Needs ``pip install py-spy``; sampling slows the peer a little,
so the harness never profiles while it measures.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import cpu, load, nginx, origin
from .origin import BULK_PATH, SMALL_PATH
from .peers import PEERS
from .processes import REPO_ROOT, install_cleanup, spawn, stop_all, wait_http_ready

EVENT_LOOP_LEAVES = ("Runner.run", "run_until_complete", "run_forever")


def summarize(folded: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        own["(event loop: uvloop C code, syscalls)" if leaf.startswith(EVENT_LOOP_LEAVES) else leaf] += count
        for frame in set(frames):
            inclusive[frame] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} samples", "", "self:"]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in own.most_common(top)]
    lines += ["", "inclusive (below the event loop):"]
    deep = [(frame, count) for frame, count in inclusive.most_common() if count < 0.9 * total]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in deep[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy.profile", description=__doc__)
    parser.add_argument("--peer", default="fastpipe", choices=[p for p, peer in PEERS.items() if peer.kind != "none"])
    parser.add_argument("--cell", default="small", choices=("small", "bulk", "sse", "small-tls", "bulk-tls"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "profile.folded")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        parser.error("py-spy is not installed (pip install py-spy)")
    peer = PEERS[args.peer]
    reason = peer.unavailable()
    if reason:
        parser.error(f"{args.peer}: {reason}")
    install_cleanup()
    plan = cpu.plan_cores()
    workdir = Path(tempfile.mkdtemp(prefix="fastpipe-profile-"))
    (workdir / "logs").mkdir()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    use_wrk = load.wrk_binary() is not None
    try:
        tls = args.cell.endswith("-tls")
        origins = origin.start(workdir, cpus=plan.load_cpus, use_nginx=nginx.binary() is not None, tls=tls)
        base = args.cell.removesuffix("-tls")
        path = {"small": SMALL_PATH, "bulk": BULK_PATH, "sse": "/sse?n=100&interval_ms=1&size=100"}[base]
        upstream = origins.upstream("tls" if tls else "stream" if base == "sse" else "static")
        running = peer.start(upstream, "tls" if tls else "http", workdir, plan.proxy_cpus)
        assert running.process is not None
        wait_http_ready(running.process, origin.HOST, running.port, SMALL_PATH)
        record = [spy, "record", "--pid", str(running.process.pid), "--rate", str(args.rate), "--nonblocking"]
        record += ["--duration", str(max(1, round(args.seconds))), "--format", "raw", "--output", str(args.output)]
        sampler = spawn("py-spy", record, log_dir=workdir / "logs", cpus=plan.load_cpus)
        time.sleep(0.5)  # let py-spy attach before the load starts
        url = f"http://{origin.HOST}:{running.port}{path}"
        connections = 4 if base == "bulk" else 64
        result = load.run_http(url, connections, args.seconds, workdir=workdir, cpus=plan.load_cpus, use_wrk=use_wrk)
        sampler.popen.wait(timeout=args.seconds + 30)
    except subprocess.TimeoutExpired:
        print("py-spy did not finish", file=sys.stderr)
        return 1
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.peer} under {args.cell}: {result.per_second:,.0f} responses/s while sampled; stacks in {args.output}")
    print(summarize(args.output, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
