"""``fastpipe demo proxy``: the built-in origin, the proxy in front of it, and concurrent clients through it.

Three workloads run at once on loopback: SSE-style token streams (many small chunks, each must arrive
as it is sent), bulk downloads (Content-Length and chunked), and uploads echoed back. A progress bar
shows the bytes received; the final table gives requests, bytes, throughput, p50/p99 time to first byte
and the sha256 check of every body against what the origin sent. Exit status 0 only if every body
arrived whole.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from httptools import HttpResponseParser

from .._origin import payload, payload_sha256, start_origin, tokens_sha256
from ..http.proxy import shutdown_proxy, start_proxy

__all__ = ("main",)


@dataclass
class _Progress:
    expected: int
    received: int = 0
    finished: int = 0
    requests: int = 0


@dataclass
class _Result:
    ok: bool
    status: int
    nbytes: int
    ttfb: float
    duration: float


@dataclass
class _Workload:
    name: str
    expected_sha256: str
    expected_size: int
    results: list[_Result] = field(default_factory=list)


class _Fetch(asyncio.Protocol):
    """One request on its own connection; the body is hashed as it streams, never held."""

    def __init__(self, request: bytes, upload: Iterator[bytes] | None, progress: _Progress) -> None:
        self._request = request
        self._upload = upload
        self._progress = progress
        self._parser = HttpResponseParser(self)
        self._digest = hashlib.sha256()
        self._transport: Any = None
        self._paused = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.status = 0
        self.nbytes = 0
        self.started = time.monotonic()
        self.first_byte = 0.0

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.write(self._request)  # type: ignore[attr-defined]
        self._send_upload()

    def _send_upload(self) -> None:
        if self._upload is None:
            return
        for part in self._upload:
            self._transport.write(part)
            if self._paused:
                return
        self._upload = None

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._send_upload()

    def data_received(self, data: bytes) -> None:
        if not self.first_byte:
            self.first_byte = time.monotonic()
        self._parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._digest.update(body)
        self.nbytes += len(body)
        self._progress.received += len(body)

    def on_message_complete(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the response ended"))


async def _fetch(
    port: int, workload: _Workload, request: bytes, upload: Iterator[bytes] | None, progress: _Progress
) -> None:
    loop = asyncio.get_running_loop()
    _, fetch = await loop.create_connection(lambda: _Fetch(request, upload, progress), "127.0.0.1", port)
    try:
        await fetch.done
        ok = fetch.status == 200 and fetch.sha256 == workload.expected_sha256 and fetch.nbytes == workload.expected_size
    except ConnectionError:
        ok = False
    now = time.monotonic()
    ttfb = (fetch.first_byte or now) - fetch.started
    workload.results.append(_Result(ok, fetch.status, fetch.nbytes, ttfb, now - fetch.started))
    progress.finished += 1


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def _progress_bar(progress: _Progress, stop: asyncio.Event, tty: bool) -> None:
    width = 30
    last_line = 0.0
    while True:
        share = min(1.0, progress.received / max(1, progress.expected))
        filled = int(share * width)
        line = (
            f"\r  [{'#' * filled}{'.' * (width - filled)}] {share * 100:5.1f}%  "
            f"{progress.received / 1e6:8.1f} MB  {progress.finished}/{progress.requests} requests"
        )
        now = time.monotonic()
        if tty:
            print(line, end="", file=sys.stderr, flush=True)
        elif now - last_line >= 1.0 or stop.is_set():
            print(line.strip("\r"), file=sys.stderr, flush=True)
            last_line = now
        if stop.is_set():
            if tty:
                print(file=sys.stderr)
            return
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except asyncio.TimeoutError:
            pass


async def run_demo(scale: float = 1.0, streams: int = 32, downloads: int = 8, uploads: int = 8) -> int:
    origin = await start_origin()
    origin_port = origin.sockets[0].getsockname()[1]
    server = await start_proxy(f"http://127.0.0.1:{origin_port}", port=0)
    port = server.sockets[0].getsockname()[1]
    tokens = max(1, int(200 * scale))
    download_size = max(1, int(16 * 1024 * 1024 * scale))
    upload_size = max(1, int(4 * 1024 * 1024 * scale))
    token_bytes = sum(len(b'data: {"index": %d, "token": "tok%d"}\n\n' % (i, i)) for i in range(tokens))
    sse = _Workload("SSE token streams", tokens_sha256(tokens), token_bytes)
    bulk = _Workload("bulk downloads", payload_sha256(download_size, seed=1), download_size)
    echo = _Workload("upload echo", payload_sha256(upload_size, seed=2), upload_size)
    progress = _Progress(expected=streams * token_bytes + downloads * download_size + uploads * upload_size)
    print(
        f"fastpipe demo proxy: origin 127.0.0.1:{origin_port}, proxy 127.0.0.1:{port}; {streams} SSE streams of "
        f"{tokens} tokens, {downloads} downloads of {download_size / 2**20:.1f} MiB, {uploads} uploads of "
        f"{upload_size / 2**20:.1f} MiB echoed",
        file=sys.stderr,
    )
    jobs = []
    for _ in range(streams):
        request = b"GET /tokens?n=%d&delay=0.005 HTTP/1.1\r\nHost: demo\r\n\r\n" % tokens
        jobs.append(_fetch(port, sse, request, None, progress))
    for index in range(downloads):
        chunked = b"&chunked=1" if index % 2 else b""
        request = b"GET /bytes?n=%d&seed=1%s HTTP/1.1\r\nHost: demo\r\n\r\n" % (download_size, chunked)
        jobs.append(_fetch(port, bulk, request, None, progress))
    for _ in range(uploads):
        request = b"POST /echo HTTP/1.1\r\nHost: demo\r\nContent-Length: %d\r\n\r\n" % upload_size
        jobs.append(_fetch(port, echo, request, payload(upload_size, seed=2), progress))
    progress.requests = len(jobs)
    stop = asyncio.Event()
    bar = asyncio.ensure_future(_progress_bar(progress, stop, sys.stderr.isatty()))
    started = time.monotonic()
    try:
        await asyncio.gather(*jobs)
    finally:
        elapsed = time.monotonic() - started
        stop.set()
        await bar
        await shutdown_proxy(server, 1.0)
        origin.close()
        await origin.wait_closed()
    return _report([sse, bulk, echo], elapsed)


def _report(workloads: list[_Workload], elapsed: float) -> int:
    header = f"{'workload':<20} {'requests':>8} {'bytes':>12} {'MB/s':>8} {'p50 ttfb':>10} {'p99 ttfb':>10}  integrity"
    print(header)
    print("-" * len(header))
    failures = 0
    for workload in workloads:
        results = workload.results
        nbytes = sum(result.nbytes for result in results)
        ttfbs = [result.ttfb for result in results]
        good = sum(result.ok for result in results)
        failures += len(results) - good
        print(
            f"{workload.name:<20} {len(results):>8} {nbytes:>12,} {nbytes / elapsed / 1e6:>8.1f} "
            f"{_percentile(ttfbs, 0.5) * 1000:>8.2f}ms {_percentile(ttfbs, 0.99) * 1000:>8.2f}ms  "
            f"sha256 {good}/{len(results)} {'ok' if good == len(results) else 'FAILED'}"
        )
    print(f"all in {elapsed:.2f} s; " + ("every body arrived whole" if not failures else f"{failures} bodies damaged"))
    return 0 if not failures else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastpipe demo proxy", description="Run the proxy demo.")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply body sizes and token counts")
    parser.add_argument("--streams", type=int, default=32, help="concurrent SSE streams")
    parser.add_argument("--downloads", type=int, default=8, help="concurrent bulk downloads")
    parser.add_argument("--uploads", type=int, default=8, help="concurrent uploads echoed back")
    parser.add_argument("--stock-loop", action="store_true", help="use asyncio's own loop instead of uvloop")
    args = parser.parse_args(argv)
    from .._loop import run

    return run(lambda: run_demo(args.scale, args.streams, args.downloads, args.uploads), stock_loop=args.stock_loop)
