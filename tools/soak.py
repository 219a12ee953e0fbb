"""Soak: a bounded run of mixed traffic through fastpipe's proxy, watching its memory, descriptors and Pipes.

    .venv/bin/python tools/soak.py                    # 10 minutes (make soak)
    .venv/bin/python tools/soak.py --duration 60      # a quick one
    .venv/bin/python tools/soak.py --json out.json    # also write the samples and the verdict

Three processes on 127.0.0.1: the built-in origin (``fastpipe._origin``), the proxy (``start_proxy`` on
uvloop, as the CLI runs it, plus a stats port that answers its live Pipe count), and this one, the load:
``--concurrency`` workers sending small, bulk, streaming (SSE) and upload requests, checked by sha256,
mixed with downloads and uploads aborted midway and upstreams dying mid-body. Every ``--interval``
seconds it samples the proxy's RSS and open descriptors (from outside, psutil) and its live Pipe and
exchange counts (from inside, a gc scan); at the end the traffic stops for ``--idle`` seconds and a last
sample is taken after a full collection.

Pass: no unexpected outcome (wrong bytes, unexpected status, a stuck request); RSS flat after warm-up (the
median of the last quarter of the steady phase within 10% or 8 MiB of the first quarter's); descriptors
flat (the last quarter's peak within 10% + 8 of the first quarter's) and back to the start when idle (less
the pooled upstream connections); no Pipe, exchange or client connection alive when idle. The plot
(``--out``, default benchmarks/results/soak.png) shows the four series over time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LINGER_ZERO = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # close() sends an RST

# What the load sends: (kind, weight). Sizes are fixed so each digest is computed once.
MIX = (
    ("small", 50),
    ("bulk", 4),
    ("stream", 10),
    ("upload", 8),
    ("aborted download", 4),
    ("aborted upload", 3),
    ("upstream dies", 2),
)
SMALL, BULK, UPLOAD, ABORTED = 1024, 4 << 20, 256 << 10, 16 << 20
TOKENS = 40


# -- the proxy's process -------------------------------------------------------------------------------


async def serve_proxy(upstream: str, inject_leak: bool) -> None:
    """The proxy under test, and a stats port: each connection gets one JSON line of live counts.

    ``inject_leak`` keeps an open Pipe and 16 KiB per exchange forever: the self-check that the verdict
    sees a leak.
    """
    from fastpipe import Pipe, _pipe_py
    from fastpipe.http import ExchangeRecord, proxy_of, shutdown_proxy, start_proxy
    from fastpipe.http.exchange import Exchange

    ends: Counter[str] = Counter()
    pipe_types = {Pipe, _pipe_py.Pipe}
    leaked: list[object] = []

    def on_exchange(record: ExchangeRecord) -> None:
        ends[record.end] += 1
        if inject_leak:
            leaked.append((Pipe.pushed(record), bytes(16384)))

    server = await start_proxy(upstream, port=0, on_exchange=on_exchange, idle_timeout=5.0, header_timeout=5.0)
    proxy = proxy_of(server)

    async def stats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readline()
        if request.strip() == b"collect":
            gc.collect()
        pipes = exchanges = 0
        for item in gc.get_objects():
            kind = type(item)
            if kind in pipe_types:
                pipes += 1
            elif kind is Exchange:
                exchanges += 1
        answer = {
            "pipes": pipes,
            "exchanges": exchanges,
            "connections": len(proxy.connections),
            "pool_open": proxy.pool.open,
            "pool_idle": proxy.pool.idle,
            "ends": dict(ends),
        }
        writer.write(json.dumps(answer).encode() + b"\n")
        await writer.drain()
        writer.close()

    stats_server = await asyncio.start_server(stats, "127.0.0.1", 0)
    ports = {"port": server.sockets[0].getsockname()[1], "stats": stats_server.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    stats_server.close()
    await shutdown_proxy(server, grace=1.0)


async def serve_origin() -> None:
    from fastpipe._origin import start_origin

    server = await start_origin()
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


# -- the load ------------------------------------------------------------------------------------------


class Incomplete(Exception):
    """The connection ended before the response did."""


class Connection:
    """A keep-alive HTTP/1.1 client connection that checks each response by digest."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from httptools import HttpResponseParser

        self.reader = reader
        self.writer = writer
        self.parser = HttpResponseParser(self)
        self.digest = hashlib.sha256()
        self.size = 0
        self.done = False
        self.reusable = True

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def on_body(self, body: bytes) -> None:
        self.digest.update(body)
        self.size += len(body)

    def on_message_complete(self) -> None:
        self.done = True

    async def request(self, head: bytes, body: bytes = b"", stop_after: int | None = None) -> tuple[int, str, int]:
        """(status, sha256 of the body, body size); ``stop_after`` aborts once that many body bytes came."""
        self.digest = hashlib.sha256()
        self.size = 0
        self.done = False
        self.writer.write(head + body)
        while not self.done:
            data = await self.reader.read(262144)
            if not data:
                self.reusable = False
                raise Incomplete(f"closed after {self.size} body bytes")
            self.parser.feed_data(data)
            if stop_after is not None and self.size >= stop_after:
                self.abort()
                return 0, "", self.size
        self.reusable = self.reusable and self.parser.should_keep_alive()
        return self.parser.get_status_code(), self.digest.hexdigest(), self.size

    def abort(self) -> None:
        self.reusable = False
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.transport.abort()


@dataclass
class Load:
    port: int
    served: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    total: int = 0
    digests: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from fastpipe._origin import payload_sha256, tokens_sha256

        self.upload_body = random.Random(7).randbytes(UPLOAD)
        self.digests = {
            "small": payload_sha256(SMALL, 1),
            "bulk": payload_sha256(BULK, 2),
            "stream": tokens_sha256(TOKENS),
            "upload": hashlib.sha256(self.upload_body).hexdigest(),
        }

    async def worker(self, seed: int, until: float) -> None:
        rng = random.Random(seed)
        kinds = [kind for kind, _ in MIX]
        weights = [weight for _, weight in MIX]
        connection: Connection | None = None
        loop = asyncio.get_running_loop()
        try:
            while loop.time() < until:
                kind = rng.choices(kinds, weights)[0]
                if connection is None or not connection.reusable:
                    if connection is not None:
                        connection.close()
                    connection = await Connection.open(self.port)
                try:
                    outcome = await asyncio.wait_for(self.one(kind, connection, rng), 60)
                except (asyncio.TimeoutError, TimeoutError):
                    outcome = "stuck for 60 s"
                    connection.abort()
                except (Incomplete, ConnectionError) as exc:
                    outcome = f"incomplete: {type(exc).__name__}"
                    connection.reusable = False
                self.total += 1
                if outcome == "ok":
                    self.served[kind] += 1
                else:
                    self.errors[f"{kind}: {outcome}"] += 1
        finally:
            if connection is not None:
                connection.close()

    async def one(self, kind: str, connection: Connection, rng: random.Random) -> str:
        host = b"Host: soak\r\n"
        if kind == "small":
            status, digest, _ = await connection.request(b"GET /bytes?n=%d&seed=1 HTTP/1.1\r\n%s\r\n" % (SMALL, host))
            return "ok" if (status, digest) == (200, self.digests["small"]) else f"status {status} or wrong bytes"
        if kind == "bulk":
            chunked = b"&chunked=1" if rng.random() < 0.5 else b""
            head = b"GET /bytes?n=%d&seed=2%s HTTP/1.1\r\n%s\r\n" % (BULK, chunked, host)
            status, digest, _ = await connection.request(head)
            return "ok" if (status, digest) == (200, self.digests["bulk"]) else f"status {status} or wrong bytes"
        if kind == "stream":
            head = b"GET /tokens?n=%d&delay=0.005 HTTP/1.1\r\n%s\r\n" % (TOKENS, host)
            status, digest, _ = await connection.request(head)
            return "ok" if (status, digest) == (200, self.digests["stream"]) else f"status {status} or wrong bytes"
        if kind == "upload":
            head = b"POST /echo HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (host, UPLOAD)
            status, digest, _ = await connection.request(head, self.upload_body)
            return "ok" if (status, digest) == (200, self.digests["upload"]) else f"status {status} or wrong bytes"
        if kind == "aborted download":
            head = b"GET /bytes?n=%d&seed=3 HTTP/1.1\r\n%s\r\n" % (ABORTED, host)
            await connection.request(head, stop_after=rng.randint(1, 4 << 20))
            return "ok"
        if kind == "aborted upload":
            head = b"POST /echo HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (host, 1 << 20)
            connection.writer.write(head + self.upload_body[: rng.randint(1, UPLOAD)])
            await connection.writer.drain()
            await asyncio.sleep(0.01)
            connection.abort()
            return "ok"
        if kind == "upstream dies":
            try:
                await connection.request(b"GET /die?n=100000 HTTP/1.1\r\n%s\r\n" % host)
            except (Incomplete, ConnectionError):
                return "ok"  # the cut is visible: that is the point
            return "a cut body arrived as a complete response"
        raise AssertionError(kind)


# -- sampling and the verdict --------------------------------------------------------------------------


async def proxy_stats(port: int, collect: bool = False) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"collect\n" if collect else b"sample\n")
    line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    answer: dict[str, Any] = json.loads(line)
    return answer


@dataclass
class Sample:
    t: float
    phase: str
    rss_mib: float
    fds: int
    pipes: int
    exchanges: int
    connections: int
    pool_open: int
    requests: int


async def sample_forever(
    process: Any, stats_port: int, load: Load, started: float, phase: list[str], samples: list[Sample], every: float
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        stats = await proxy_stats(stats_port)
        samples.append(
            Sample(
                t=round(loop.time() - started, 2),
                phase=phase[0],
                rss_mib=round(process.memory_info().rss / 2**20, 2),
                fds=process.num_fds(),
                pipes=stats["pipes"],
                exchanges=stats["exchanges"],
                connections=stats["connections"],
                pool_open=stats["pool_open"],
                requests=load.total,
            )
        )
        await asyncio.sleep(every)


def verdict(
    samples: list[Sample], baseline: Sample, idle: Sample, idle_stats: dict[str, Any], load: Load
) -> dict[str, Any]:
    steady = [sample for sample in samples if sample.phase == "steady"]
    checks: dict[str, Any] = {}
    if len(steady) >= 8:
        quarter = max(2, len(steady) // 4)
        first, last = steady[:quarter], steady[-quarter:]
        rss_first = statistics.median(s.rss_mib for s in first)
        rss_last = statistics.median(s.rss_mib for s in last)
        fds_first = max(s.fds for s in first)
        fds_last = max(s.fds for s in last)
        minutes = (steady[-1].t - steady[0].t) / 60 or 1.0
        slope = (statistics.linear_regression([s.t for s in steady], [s.rss_mib for s in steady]).slope) * 60
        checks["rss_first_quarter_mib"] = rss_first
        checks["rss_last_quarter_mib"] = rss_last
        checks["rss_ratio"] = round(rss_last / rss_first, 4)
        checks["rss_slope_mib_per_min"] = round(slope, 3)
        checks["rss_flat"] = rss_last <= rss_first * 1.10 or rss_last - rss_first <= 8.0
        checks["fds_first_quarter_peak"] = fds_first
        checks["fds_last_quarter_peak"] = fds_last
        checks["fds_ratio"] = round(fds_last / fds_first, 4)
        checks["fds_flat"] = fds_last <= fds_first * 1.10 + 8
        checks["steady_minutes"] = round(minutes, 2)
    else:
        checks["rss_flat"] = checks["fds_flat"] = False
        checks["note"] = "too few steady samples: run longer or sample more often"
    checks["fds_at_start"] = baseline.fds
    checks["fds_idle"] = idle.fds
    checks["pool_open_idle"] = idle.pool_open
    checks["fds_back_when_idle"] = idle.fds - idle.pool_open <= baseline.fds + 2
    checks["pipes_idle"] = idle.pipes
    checks["exchanges_idle"] = idle.exchanges
    checks["connections_idle"] = idle.connections
    checks["nothing_alive_when_idle"] = idle.pipes == 0 and idle.exchanges == 0 and idle.connections == 0
    checks["unexpected_outcomes"] = sum(load.errors.values())
    checks["proxy_exchange_ends"] = idle_stats.get("ends", {})
    checks["passed"] = bool(
        checks["rss_flat"]
        and checks["fds_flat"]
        and checks["fds_back_when_idle"]
        and checks["nothing_alive_when_idle"]
        and checks["unexpected_outcomes"] == 0
    )
    return checks


def plot(samples: list[Sample], warmup: float, traffic_end: float, checks: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [s.t for s in samples]
    rates = [0.0] + [
        (b.requests - a.requests) / (b.t - a.t) if b.t > a.t else 0.0 for a, b in itertools.pairwise(samples)
    ]
    figure, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    series = (
        ("proxy RSS (MiB)", [s.rss_mib for s in samples]),
        ("proxy open descriptors", [s.fds for s in samples]),
        ("live Pipes / client connections", [s.pipes for s in samples]),
        ("requests per second", rates),
    )
    for axis, (label, values) in zip(axes, series, strict=True):
        axis.plot(times, values, lw=1.2)
        axis.set_ylabel(label)
        axis.axvspan(0, warmup, color="0.9", label="warm-up")
        axis.axvspan(traffic_end, times[-1] if times else traffic_end, color="#dde8f5", label="idle")
        axis.grid(alpha=0.3)
    axes[2].plot(times, [s.connections for s in samples], lw=1, color="tab:orange", label="client connections")
    axes[2].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds")
    verdict_text = "PASS" if checks["passed"] else "FAIL"
    figure.suptitle(
        f"fastpipe soak: {verdict_text} — RSS ratio {checks.get('rss_ratio', '?')}, fds ratio "
        f"{checks.get('fds_ratio', '?')}, live Pipes when idle {checks['pipes_idle']}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def start_child(role: str, *extra: str) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--role", role, *extra], stdout=subprocess.PIPE, cwd=ROOT
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise SystemExit(f"soak: the {role} process did not start")
    ports: dict[str, int] = json.loads(line)
    return process, ports


async def soak(options: argparse.Namespace) -> int:
    import psutil  # type: ignore[import-untyped]

    origin, origin_ports = start_child("origin")
    leak = ["--inject-leak"] if options.inject_leak else []
    proxy, proxy_ports = start_child("proxy", f"http://127.0.0.1:{origin_ports['port']}", *leak)
    samples: list[Sample] = []
    try:
        process = psutil.Process(proxy.pid)
        load = Load(proxy_ports["port"])
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0.5)
        started = loop.time()
        phase = ["warm-up"]
        sampler = asyncio.ensure_future(
            sample_forever(process, proxy_ports["stats"], load, started, phase, samples, options.interval)
        )
        await asyncio.sleep(0.2)
        baseline = samples[0]
        traffic_for = max(1.0, options.duration - options.idle)
        until = started + traffic_for
        workers = [asyncio.ensure_future(load.worker(seed, until)) for seed in range(options.concurrency)]

        async def phases() -> None:
            await asyncio.sleep(min(options.warmup, traffic_for))
            phase[0] = "steady"

        phase_task = asyncio.ensure_future(phases())
        last_report = started
        while not all(worker.done() for worker in workers):
            await asyncio.sleep(1.0)
            if loop.time() - last_report >= 30:
                last_report = loop.time()
                latest = samples[-1]
                print(
                    f"soak: {latest.t:6.0f}s {load.total} requests, {sum(load.errors.values())} unexpected, "
                    f"RSS {latest.rss_mib:.1f} MiB, {latest.fds} fds, {latest.pipes} live Pipes",
                    flush=True,
                )
        for worker in workers:
            worker.result()
        phase_task.cancel()
        traffic_end = loop.time() - started
        phase[0] = "idle"
        await asyncio.sleep(options.idle)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        idle_stats = await proxy_stats(proxy_ports["stats"], collect=True)
        idle = Sample(
            t=round(loop.time() - started, 2),
            phase="idle",
            rss_mib=round(process.memory_info().rss / 2**20, 2),
            fds=process.num_fds(),
            pipes=idle_stats["pipes"],
            exchanges=idle_stats["exchanges"],
            connections=idle_stats["connections"],
            pool_open=idle_stats["pool_open"],
            requests=load.total,
        )
        samples.append(idle)
    finally:
        for child in (proxy, origin):
            child.send_signal(signal.SIGTERM)
        for child in (proxy, origin):
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    checks = verdict(samples, baseline, idle, idle_stats, load)
    plot(samples, options.warmup, traffic_end, checks, options.out)
    print(f"soak: {load.total} requests in {traffic_end:.0f}s; served: {dict(load.served)}")
    print(f"soak: unexpected outcomes: {dict(load.errors) or 'none'}")
    for key, value in checks.items():
        print(f"  {key}: {value}")
    print(f"soak: plot in {options.out}")
    if options.json:
        report = {
            "options": {k: str(v) for k, v in vars(options).items()},
            "served": dict(load.served),
            "unexpected": dict(load.errors),
            "checks": checks,
            "samples": [asdict(sample) for sample in samples],
        }
        options.json.write_text(json.dumps(report, indent=1))
    print("soak: PASS" if checks["passed"] else "soak: FAIL")
    return 0 if checks["passed"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds in all (default 600)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds of warm-up (default: a sixth)")
    parser.add_argument("--idle", type=float, default=None, help="seconds without traffic at the end (default 15)")
    parser.add_argument("--interval", type=float, default=None, help="seconds between samples (default ~1/150)")
    parser.add_argument("--concurrency", type=int, default=16, help="load workers (default 16)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.png")
    parser.add_argument("--json", type=Path, help="write samples and verdict here")
    parser.add_argument(
        "--inject-leak", action="store_true", help="self-check: the proxy keeps a Pipe and 16 KiB per exchange"
    )
    parser.add_argument("--role", choices=("origin", "proxy"), help=argparse.SUPPRESS)
    parser.add_argument("upstream", nargs="?", help=argparse.SUPPRESS)
    options = parser.parse_args()

    import uvloop

    if options.role == "origin":
        uvloop.run(serve_origin())
        return 0
    if options.role == "proxy":
        uvloop.run(serve_proxy(options.upstream, options.inject_leak))
        return 0
    if options.warmup is None:
        options.warmup = options.duration / 6
    if options.idle is None:
        options.idle = min(15.0, options.duration / 6)
    if options.interval is None:
        options.interval = max(0.5, min(5.0, options.duration / 150))
    os.environ.setdefault("PYTHONHASHSEED", "0")
    return uvloop.run(soak(options))


if __name__ == "__main__":
    sys.exit(main())
