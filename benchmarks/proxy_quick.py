"""Quick proxy check: CPU per proxied request, fastpipe against a bare uvloop TCP relay, same run.

Starts, each in its own process: a minimal origin (a fixed response of ``--size`` bytes), a bare uvloop
relay (bytes copied both ways, one upstream connection per client connection, no HTTP at all: the floor
any proxy stands on), fastpipe's proxy (zero-copy, and with ``--copy`` also the on_body-copy mode), and a
closed-loop keep-alive load client. For each target it reports requests per second and the proxy
process's CPU time per request (user + system, from psutil), and the ratio to the relay.

    python benchmarks/proxy_quick.py                 # 1 KiB responses, best of 3 x 2 s per target
    python benchmarks/proxy_quick.py --size 1048576 --copy --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

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
import asyncio, sys, uvloop
from fastpipe.http import start_proxy
async def main():
    await start_proxy("http://127.0.0.1:" + sys.argv[1], port=int(sys.argv[2]), zero_copy=sys.argv[3] == "1")
    await asyncio.sleep(3600)
uvloop.run(main())
"""

CLIENT = """
import asyncio, sys, time, uvloop, httptools
PORT, CONNECTIONS, SECONDS = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
REQUEST = b"GET /bytes HTTP/1.1\\r\\nHost: bench\\r\\nUser-Agent: proxy-quick\\r\\nAccept: */*\\r\\n\\r\\n"
done = 0
stop_at = 0.0
class Client(asyncio.Protocol):
    def __init__(self, finished):
        self.parser = httptools.HttpResponseParser(self)
        self.finished = finished
    def connection_made(self, transport):
        self.transport = transport
        transport.write(REQUEST)
    def data_received(self, data):
        self.parser.feed_data(data)
    def on_message_complete(self):
        global done
        done += 1
        if time.monotonic() < stop_at:
            self.transport.write(REQUEST)
        else:
            self.transport.close()
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
    await asyncio.wait_for(asyncio.gather(*waits), SECONDS + 30)
    print(done)
uvloop.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def spawn(code: str, *args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)])


def run_client(port: int, connections: int, seconds: float) -> int:
    result = subprocess.run(
        [sys.executable, "-c", CLIENT, str(port), str(connections), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(result.stdout.strip())


def measure_once(port: int, pid: int, args: argparse.Namespace) -> dict[str, float]:
    proxy = psutil.Process(pid)
    before = proxy.cpu_times()
    started = time.perf_counter()
    requests = run_client(port, args.connections, args.seconds)
    elapsed = time.perf_counter() - started
    after = proxy.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    return {"requests": requests, "rps": requests / elapsed, "cpu_us_per_request": cpu / requests * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, help="response body bytes (default 1024)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per target, interleaved; the best is kept")
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive client connections")
    parser.add_argument("--copy", action="store_true", help="also measure the on_body-copy forwarding mode")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    pure = os.environ.get("FASTPIPE_NO_EXTENSIONS", "") not in ("", "0")
    targets = [("bare relay", RELAY, []), ("fastpipe", FASTPIPE, [1])]
    if args.copy:
        targets.append(("fastpipe copy", FASTPIPE, [0]))
    origin_port = free_port()
    processes = [spawn(ORIGIN, args.size, origin_port)]
    best: dict[str, dict[str, float]] = {}
    try:
        wait_listening(origin_port, processes[0])
        running = []
        for name, code, extra in targets:
            port = free_port()
            process = spawn(code, origin_port, port, *extra)
            processes.append(process)
            wait_listening(port, process)
            run_client(port, args.connections, 0.5)  # warm up: connections, pool, caches
            running.append((name, port, process.pid))
        print(
            f"{args.size} B responses, {args.connections} connections, best of {args.repeat} x {args.seconds:g} s;"
            f" Pipe: {'pure Python' if pure else 'compiled'}",
            flush=True,
        )
        for _ in range(args.repeat):  # interleaved, so a noisy neighbour hurts every target alike
            for name, port, pid in running:
                row = measure_once(port, pid, args)
                if name not in best or row["cpu_us_per_request"] < best[name]["cpu_us_per_request"]:
                    best[name] = row
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
    floor = best["bare relay"]["cpu_us_per_request"]
    for name, row in best.items():
        row["ratio_to_relay"] = row["cpu_us_per_request"] / floor
        print(
            f"  {name:<14} {row['rps']:>9.0f} req/s {row['cpu_us_per_request']:>8.1f} µs CPU/request"
            f"  {row['ratio_to_relay']:.2f}x the relay"
        )
    if args.copy:
        saved = best["fastpipe"]["cpu_us_per_request"] / best["fastpipe copy"]["cpu_us_per_request"]
        print(f"  zero-copy / copy: {saved:.2f} of the copying mode's CPU per request")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"size": args.size, "connections": args.connections, "pure": pure, "results": best}, handle, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
