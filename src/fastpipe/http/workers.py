"""``--workers N``: N proxy processes sharing one port (SO_REUSEPORT) under a small supervisor.

The supervisor starts the workers, restarts one that dies (not faster than once a second per worker, so
a worker that cannot start does not spin), and forwards SIGTERM/SIGINT to all of them, then waits for
their graceful shutdown (a little longer than the grace) before killing stragglers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ("run_supervisor",)

RESTART_BACKOFF = 1.0  # seconds: at least this long between two starts of the same worker slot


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) with SO_REUSEPORT, so port 0 becomes one fixed port all workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def run_supervisor(worker_argv: Sequence[str], workers: int, host: str, port: int, grace: float) -> int:
    """Run ``workers`` copies of ``python -m fastpipe proxy <worker_argv> --listen HOST:PORT --reuse-port``."""
    reserved = reserve_port(host, port)
    port = reserved.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    command = [sys.executable, "-m", "fastpipe", "proxy", *worker_argv, "--listen", f"{shown}:{port}", "--reuse-port"]
    stopping = False
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        received.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    slots: list[subprocess.Popen[bytes] | None] = [None] * workers
    started_at = [0.0] * workers
    try:
        print(f"fastpipe: supervisor {workers} workers on http://{shown}:{port}", file=sys.stderr, flush=True)
        while not stopping:
            now = time.monotonic()
            for index, process in enumerate(slots):
                if process is not None and process.poll() is None:
                    continue
                if process is not None:
                    print(
                        f"fastpipe: worker {process.pid} exited with {process.returncode}; restarting",
                        file=sys.stderr,
                        flush=True,
                    )
                    slots[index] = None
                if now - started_at[index] >= RESTART_BACKOFF:
                    slots[index] = subprocess.Popen(command)
                    started_at[index] = now
            time.sleep(0.1)
        forwarded = signal.SIGTERM if received and received[0] == signal.SIGTERM else signal.SIGINT
        for process in slots:
            if process is not None and process.poll() is None:
                process.send_signal(forwarded)
        deadline = time.monotonic() + grace + 5.0
        for process in slots:
            if process is None:
                continue
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return 0
    finally:
        reserved.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
