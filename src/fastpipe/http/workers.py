"""``--workers N``: N proxy processes sharing one port (SO_REUSEPORT) under a small supervisor.

The supervisor starts the workers, restarts one that dies (not faster than once a second per worker, so
a worker that cannot start does not spin), and forwards SIGTERM/SIGINT to all of them, then waits for
their graceful shutdown (a little longer than the grace) before killing stragglers.
"""

from __future__ import annotations

import os
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


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _say(text: str) -> None:
    print(f"fastpipe supervisor[{os.getpid()}]: {text}", file=sys.stderr, flush=True)


def run_supervisor(worker_argv: Sequence[str], workers: int, host: str, port: int, grace: float) -> int:
    """Run ``workers`` copies of ``python -m fastpipe proxy <worker_argv> --listen HOST:PORT --reuse-port``.

    Each worker logs its own start and drain; the supervisor logs each worker it starts, each one that dies
    (and its replacement), the stop signal, and how every worker ended.
    """
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
        _say(f"{workers} workers on http://{shown}:{port} (grace {grace:g} s)")
        while not stopping:
            now = time.monotonic()
            for index, process in enumerate(slots):
                if process is not None and process.poll() is None:
                    continue
                if process is not None:
                    wait = max(0.0, RESTART_BACKOFF - (now - started_at[index]))
                    later = f" in {wait:.1f} s" if wait > 0.05 else ""
                    _say(f"worker {process.pid} {_describe_exit(process.returncode)}; starting a replacement{later}")
                    slots[index] = None
                if now - started_at[index] >= RESTART_BACKOFF and not stopping:
                    worker = slots[index] = subprocess.Popen(command)
                    started_at[index] = now
                    _say(f"worker {worker.pid} started (slot {index + 1} of {workers})")
            time.sleep(0.1)
        forwarded = signal.SIGTERM if received and received[0] == signal.SIGTERM else signal.SIGINT
        running = [process for process in slots if process is not None and process.poll() is None]
        _say(
            f"{signal.Signals(received[0]).name if received else 'stop signal'}: "
            f"draining {len(running)} worker{'' if len(running) == 1 else 's'} (grace {grace:g} s)"
        )
        for process in running:
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
                _say(f"worker {process.pid} still ran {grace + 5.0:g} s after the stop signal: killed")
            else:
                _say(f"worker {process.pid} {_describe_exit(process.returncode)}")
        _say("stopped")
        return 0
    finally:
        reserved.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
