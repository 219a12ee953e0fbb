"""Quick proxy check: CPU per proxied request, fastpipe against a bare uvloop TCP relay, same run.

Starts, each in its own process: a minimal origin (a fixed response of ``--size`` bytes), a bare uvloop
relay (bytes copied both ways, one upstream connection per client connection, no HTTP at all: the floor
any proxy stands on), fastpipe's proxy (zero-copy, and with ``--copy`` also the on_body-copy mode), and a
closed-loop keep-alive load client. For each target it reports requests per second and the proxy
process's CPU time per request (user + system, from psutil), and the ratio to the relay.

The gateway variants run the same proxy with one thing added each, and are also reported against the
plain ``fastpipe`` target (the cost of that one thing):

* ``fastpipe-config``: a configuration file of one route with no hooks (``[upstreams.o]``, ``[[routes]]``),
  the ``--config FILE`` path, where ``fastpipe`` is the ``--upstream URL`` one;
* ``fastpipe-record``: an ``on_exchange`` hook that does nothing, so each exchange builds its record (what
  metrics and the access log also need): the part of ``fastpipe-metrics`` that is not the metrics;
* ``fastpipe-metrics``: a metrics registry counting every exchange and served at ``/metrics`` (what
  ``--metrics HOST:PORT`` does); after the runs it is scraped once to show that it counted;
* ``fastpipe-hook``: a sync ``on_request`` hook that returns None (the proxy builds a ``Request`` per
  exchange for it).

Every fastpipe target is the same ``start_proxy`` call on uvloop with only those arguments changed.
``--instructions`` counts, instead of CPU time, the instructions each target's process executes per
request under valgrind's callgrind (user space only: the interpreter, the proxy's Python, the event loop;
not the kernel's socket work): slow, but the same count on a busy machine as on a quiet one, so it can tell
apart costs a few percent apart, which CPU time on a shared box cannot.

``--compare SRC`` adds plain fastpipe imported from another source tree (``SRC`` is its ``src`` directory,
compiled Pipe built in place), in the same rounds: an A/B of two versions on the same minutes of a shared
machine.

    python benchmarks/proxy_quick.py                 # 1 KiB responses, best of 3 x 2 s per target
    python benchmarks/proxy_quick.py --only fastpipe-config --repeat 5
    python benchmarks/proxy_quick.py --size 1048576 --copy --json out.json
    python benchmarks/proxy_quick.py --only --compare /tmp/old-fastpipe/src   # this tree against another
    python benchmarks/proxy_quick.py --instructions                           # needs valgrind
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from glob import glob
from pathlib import Path
from typing import Any

import psutil

ORIGIN = """
import asyncio, sys, uvloop
SIZE = int(sys.argv[1])
HEAD = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/octet-stream\\r\\nContent-Length: %d\\r\\n\\r\\n"
RESPONSE = HEAD % SIZE + b"x" * SIZE
class Origin(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""
    def data_received(self, data):
        buffer = self.buffer + data
        count = buffer.count(b"\\r\\n\\r\\n")
        if count:
            self.transport.write(RESPONSE * count)
            buffer = buffer[buffer.rindex(b"\\r\\n\\r\\n") + 4:]
        self.buffer = buffer
async def main():
    server = await asyncio.get_running_loop().create_server(Origin, "127.0.0.1", int(sys.argv[2]))
    await asyncio.sleep(3600)
uvloop.run(main())
"""

RELAY = """
import asyncio, sys, uvloop
UPSTREAM = int(sys.argv[1])
class Upstream(asyncio.Protocol):
    def __init__(self, client):
        self.client = client
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.client.transport.write(data)
    def pause_writing(self):
        self.client.transport.pause_reading()
    def resume_writing(self):
        self.client.transport.resume_reading()
    def connection_lost(self, exc):
        self.client.transport.close()
class Client(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.upstream = None
        self.pending = []
        transport.pause_reading()
        asyncio.ensure_future(self.connect())
    async def connect(self):
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(lambda: Upstream(self), "127.0.0.1", UPSTREAM)
        for data in self.pending:
            self.upstream.transport.write(data)
        self.pending = None
        self.transport.resume_reading()
    def data_received(self, data):
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)
    def pause_writing(self):
        self.upstream.transport.pause_reading()
    def resume_writing(self):
        self.upstream.transport.resume_reading()
    def connection_lost(self, exc):
        if self.upstream is not None:
            self.upstream.transport.close()
async def main():
    await asyncio.get_running_loop().create_server(Client, "127.0.0.1", int(sys.argv[2]))
    await asyncio.sleep(3600)
uvloop.run(main())
"""

FASTPIPE = """
import asyncio, json, sys, uvloop
from fastpipe.http import start_proxy
OPTIONS = json.loads(sys.argv[3])
def on_request(request):
    return None
def on_exchange(record):
    pass
async def main():
    options = dict(OPTIONS)
    upstream = None if "config" in options else "http://127.0.0.1:" + sys.argv[1]
    if options.pop("hook", False):
        options["on_request"] = on_request
    if options.pop("record", False):
        options["on_exchange"] = on_exchange
    metrics_port = options.pop("metrics_port", None)
    if metrics_port is not None:  # what `fastpipe proxy --metrics HOST:PORT` does
        from fastpipe.gateway.metrics import GatewayMetrics, serve_metrics
        options["metrics"] = GatewayMetrics()
        serve_metrics("127.0.0.1", metrics_port, options["metrics"])
    await start_proxy(upstream, port=int(sys.argv[2]), **options)
    await asyncio.sleep(3600)
uvloop.run(main())
"""

# One route to the origin and nothing else: what `--upstream URL` means, written as a configuration file.
ROUTE_TOML = """\
[upstreams.o]
servers = ["http://127.0.0.1:{port}"]

[[routes]]
upstream = "o"
"""

VARIANTS = ("fastpipe-config", "fastpipe-record", "fastpipe-metrics", "fastpipe-hook")

CLIENT = """
import asyncio, sys, time, uvloop, httptools
PORT, CONNECTIONS, SECONDS, TOTAL = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
REQUEST = b"GET /bytes HTTP/1.1\\r\\nHost: bench\\r\\nUser-Agent: proxy-quick\\r\\nAccept: */*\\r\\n\\r\\n"
done = 0
sent = 0  # TOTAL > 0: exactly that many requests, whatever the time
stop_at = 0.0
class Client(asyncio.Protocol):
    def __init__(self, finished):
        self.parser = httptools.HttpResponseParser(self)
        self.finished = finished
    def connection_made(self, transport):
        self.transport = transport
        self.send()
    def send(self):
        global sent
        if sent < TOTAL if TOTAL else time.monotonic() < stop_at:
            sent += 1
            self.transport.write(REQUEST)
        else:
            self.transport.close()
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_message_complete(self):
        global done
        done += 1
        self.send()
    def connection_lost(self, exc):
        if not self.finished.done():
            self.finished.set_result(None)
async def main():
    global stop_at
    loop = asyncio.get_running_loop()
    stop_at = time.monotonic() + SECONDS
    waits = []
    for _ in range(CONNECTIONS):
        finished = loop.create_future()
        await loop.create_connection(lambda: Client(finished), "127.0.0.1", PORT)
        waits.append(finished)
    await asyncio.wait_for(asyncio.gather(*waits), 900 if TOTAL else SECONDS + 30)
    print(done)
uvloop.run(main())
"""


TAKEN: set[int] = set()  # every port handed out: the kernel may offer a released one again


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in TAKEN:
            TAKEN.add(port)
            return port


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def spawn(code: str, *args: object, src: str | None = None, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
    """Run ``code`` with ``args``; with ``src``, fastpipe (and anything else there) is imported from that tree;
    ``prefix`` runs it under another program (valgrind)."""
    argv = [*(prefix or []), sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    return subprocess.Popen(argv, env=with_src(src))


def with_src(src: str | None) -> dict[str, str] | None:
    """The environment of a process that imports fastpipe from ``src`` (None: this environment)."""
    if src is None:
        return None
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))


def pipe_of(src: str) -> str:
    """Where fastpipe from ``src`` comes from here, and which Pipe it loads."""
    code = "import fastpipe; print(fastpipe.__file__, 'compiled' if fastpipe.EXTENSION else 'pure Python')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=with_src(src), capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def run_client(port: int, connections: int, seconds: float, total: int = 0) -> int:
    """Requests done by a closed-loop client in ``seconds``, or exactly ``total`` requests if given."""
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, str(port), str(connections), str(seconds), str(total)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the load client failed: {result.stderr.strip()[-1500:]}")
    return int(result.stdout.strip())


def count_instructions(
    targets: list[Target], origin_port: int, args: argparse.Namespace, workdir: Path
) -> dict[str, dict[str, Any]]:
    """Each target alone under callgrind: a warm-up, a dump, ``args.requests`` requests, a dump; the second
    dump's total over the requests is the target's instructions per request."""
    found: dict[str, dict[str, Any]] = {}
    for index, (name, code, extra, src) in enumerate(targets):
        out = workdir / f"callgrind-{index}"
        port = free_port()
        valgrind = ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}"]
        process = spawn(code, origin_port, port, *extra, src=src, prefix=valgrind)
        try:
            wait_listening(port, process, timeout=180)
            run_client(port, args.connections, 0, total=args.warmup_requests)
            subprocess.run(["callgrind_control", "--dump", str(process.pid)], check=True, capture_output=True)
            dumped = set(glob(f"{out}*"))
            run_client(port, args.connections, 0, total=args.requests)
            subprocess.run(["callgrind_control", "--dump", str(process.pid)], check=True, capture_output=True)
            newest = max(set(glob(f"{out}*")) - dumped, key=os.path.getmtime)
        finally:
            process.terminate()
            process.wait(60)
        instructions = callgrind_total(newest)
        found[name] = {"requests": args.requests, "instructions_per_request": instructions / args.requests}
        print(f"  {name}: {instructions / args.requests:,.0f} instructions per request", flush=True)
    return found


def callgrind_total(path: str) -> int:
    """The instructions (Ir) a callgrind dump counted."""
    with open(path) as dump:
        for line in dump:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"{path} has no totals")


def measure_once(port: int, pid: int, args: argparse.Namespace) -> dict[str, float]:
    proxy = psutil.Process(pid)
    before = proxy.cpu_times()
    started = time.perf_counter()
    requests = run_client(port, args.connections, args.seconds)
    elapsed = time.perf_counter() - started
    after = proxy.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return {"requests": requests, "rps": requests / elapsed, "cpu_us_per_request": cpu / requests * 1e6}


Target = tuple[str, str, list[object], "str | None"]  # name, code, extra argv, source tree (None: this one)


def fastpipe_targets(args: argparse.Namespace, origin_port: int, workdir: Path) -> list[Target]:
    """The fastpipe targets; their extra argv is start_proxy's options as JSON."""
    targets: list[Target] = [("fastpipe", FASTPIPE, [json.dumps({"zero_copy": True})], None)]
    if args.copy:
        targets.append(("fastpipe copy", FASTPIPE, [json.dumps({"zero_copy": False})], None))
    for name in args.only:
        if name == "fastpipe-config":
            config = workdir / "route.toml"
            config.write_text(ROUTE_TOML.format(port=origin_port))
            options: dict[str, object] = {"config": str(config)}
        elif name == "fastpipe-record":
            options = {"zero_copy": True, "record": True}
        elif name == "fastpipe-metrics":
            options = {"zero_copy": True, "metrics_port": free_port()}
        else:
            options = {"zero_copy": True, "hook": True}
        targets.append((name, FASTPIPE, [json.dumps(options)], None))
    for src in args.compare:
        targets.append((f"fastpipe @ {src}", FASTPIPE, [json.dumps({"zero_copy": True})], src))
    return targets


def scrape_requests(metrics_port: int) -> float:
    """The sum of fastpipe_requests_total over its series, from one scrape."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("fastpipe_requests_total{")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="response body bytes (default 1024)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per target, interleaved; the best is kept")
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive client connections")
    parser.add_argument("--copy", action="store_true", help="also measure the on_body-copy forwarding mode")
    parser.add_argument(
        "--only",
        nargs="*",
        choices=VARIANTS,
        default=list(VARIANTS),
        metavar="VARIANT",
        help=f"gateway variants to measure besides the relay and fastpipe (default all: {' '.join(VARIANTS)});"
        " none given: none",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="SRC",
        help="also plain fastpipe from this source tree's src directory (its compiled Pipe built); repeatable",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under callgrind instead of CPU time (needs valgrind; slow)",
    )
    parser.add_argument("--requests", type=int, default=3000, help="--instructions: requests counted (3000)")
    parser.add_argument("--warmup-requests", type=int, default=300, help="--instructions: requests before (300)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if args.instructions and not (shutil.which("valgrind") and shutil.which("callgrind_control")):
        parser.error("--instructions needs valgrind (apt-get install valgrind)")
    for src in args.compare:
        if not (Path(src) / "fastpipe" / "__init__.py").is_file():
            parser.error(f"--compare {src}: no fastpipe package there (give the tree's src directory)")
        print(f"fastpipe @ {src}: {pipe_of(src)}", flush=True)
    pure = os.environ.get("FASTPIPE_NO_EXTENSIONS", "") not in ("", "0")
    origin_port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="fastpipe-quick-"))
    targets: list[Target] = [("bare relay", RELAY, [], None), *fastpipe_targets(args, origin_port, workdir)]
    processes = [spawn(ORIGIN, args.size, origin_port)]
    rounds: dict[str, list[dict[str, float]]] = {}
    best: dict[str, dict[str, Any]] = {}
    counted: float | None = None
    try:
        wait_listening(origin_port, processes[0])
        if args.instructions:
            print(
                f"{args.size} B responses, {args.connections} connections, instructions per request over"
                f" {args.requests:,} requests under callgrind; Pipe: {'pure Python' if pure else 'compiled'}",
                flush=True,
            )
            best = count_instructions(targets, origin_port, args, workdir)
            return report_instructions(best, args, pure)
        running = []
        for name, code, extra, src in targets:
            port = free_port()
            process = spawn(code, origin_port, port, *extra, src=src)
            processes.append(process)
            wait_listening(port, process)
            run_client(port, args.connections, 0.5)  # warm up: connections, pool, caches
            running.append((name, port, process.pid))
        print(
            f"{args.size} B responses, {args.connections} connections, best of {args.repeat} x {args.seconds:g} s;"
            f" Pipe: {'pure Python' if pure else 'compiled'}",
            flush=True,
        )
        for index in range(args.repeat):  # interleaved, so a noisy neighbour hurts every target alike
            shift = index % len(running)  # and rotated, so no target always runs first
            for name, port, pid in running[shift:] + running[:shift]:
                row = measure_once(port, pid, args)
                rounds.setdefault(name, []).append(row)
                if name not in best or row["cpu_us_per_request"] < best[name]["cpu_us_per_request"]:
                    best[name] = row
        if "fastpipe-metrics" in args.only:
            options = json.loads(str(next(extra for name, _, extra, _ in targets if name == "fastpipe-metrics")[0]))
            counted = scrape_requests(int(options["metrics_port"]))
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        for leftover in workdir.iterdir():
            leftover.unlink()
        workdir.rmdir()
    floor = best["bare relay"]["cpu_us_per_request"]
    plain = best["fastpipe"]["cpu_us_per_request"]
    width = max(16, *map(len, best))
    for name, row in best.items():
        row["ratio_to_relay"] = row["cpu_us_per_request"] / floor
        line = (
            f"  {name:<{width}} {row['rps']:>9.0f} req/s {row['cpu_us_per_request']:>8.1f} µs CPU/request"
            f"  {row['ratio_to_relay']:.2f}x the relay"
        )
        if name not in ("bare relay", "fastpipe"):
            # Each round ran every target within seconds: its ratio is the fairest pair on a noisy box.
            paired = [
                mine["cpu_us_per_request"] / base["cpu_us_per_request"]
                for mine, base in zip(rounds[name], rounds["fastpipe"], strict=True)
            ]
            row["ratio_to_fastpipe"] = row["cpu_us_per_request"] / plain
            row["ratio_to_fastpipe_per_round"] = paired
            row["added_us_over_fastpipe"] = row["cpu_us_per_request"] - plain
            line += (
                f"  {row['ratio_to_fastpipe']:.3f}x fastpipe ({row['added_us_over_fastpipe']:+.1f} µs;"
                f" per round {' '.join(f'{r:.2f}' for r in paired)}, median {statistics.median(paired):.3f})"
            )
        print(line)
    if args.copy:
        saved = best["fastpipe"]["cpu_us_per_request"] / best["fastpipe copy"]["cpu_us_per_request"]
        print(f"  zero-copy / copy: {saved:.2f} of the copying mode's CPU per request")
    if counted is not None:
        print(f"  fastpipe-metrics counted {counted:,.0f} exchanges in fastpipe_requests_total")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "size": args.size,
                    "connections": args.connections,
                    "pure": pure,
                    "results": best,
                    "rounds": rounds,
                    "metrics_counted": counted,
                },
                handle,
                indent=2,
            )
    return 0


def report_instructions(found: dict[str, dict[str, Any]], args: argparse.Namespace, pure: bool) -> int:
    floor = found["bare relay"]["instructions_per_request"]
    plain = found["fastpipe"]["instructions_per_request"]
    width = max(16, *map(len, found))
    for name, row in found.items():
        mine = row["instructions_per_request"]
        row["ratio_to_relay"] = mine / floor
        line = f"  {name:<{width}} {mine:>10,.0f} instructions/request  {row['ratio_to_relay']:.2f}x the relay"
        if name not in ("bare relay", "fastpipe"):
            row["ratio_to_fastpipe"] = mine / plain
            row["added_over_fastpipe"] = mine - plain
            line += f"  {row['ratio_to_fastpipe']:.3f}x fastpipe ({mine - plain:+,.0f})"
        print(line)
    if args.json:
        with open(args.json, "w") as handle:
            payload = {"size": args.size, "connections": args.connections, "pure": pure, "instructions": found}
            json.dump(payload, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
