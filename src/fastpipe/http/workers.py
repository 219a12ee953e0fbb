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
from typing import Any

__all__ = ("run_supervisor", "worker_of_supervisor")

RESTART_BACKOFF = 1.0  # seconds: at least this long between two starts of the same worker slot
# Set in each worker's environment when the supervisor serves the metrics: the worker only counts.
METRICS_WORKER_ENV = "FASTPIPE_METRICS_WORKER"


def worker_of_supervisor() -> bool:
    """Whether this process is a worker whose metrics a supervisor serves (summed over the workers)."""
    return os.environ.get(METRICS_WORKER_ENV) == "1"


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


def say(who: str, text: str) -> None:
    """One line on stderr as ``who[pid]: text``, in one write: the workers and their supervisor share the
    stream, and a line written in pieces can be cut by another process's line."""
    line = f"{who}[{os.getpid()}]: {text}\n"
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stderr (a captured one in tests): one write call
        sys.stderr.write(line)
        sys.stderr.flush()
        return
    sys.stderr.flush()
    os.write(fd, line.encode("utf-8", "replace"))


def _say(text: str) -> None:
    say("fastpipe supervisor", text)


def run_supervisor(
    worker_argv: Sequence[str], workers: int, host: str, port: int, grace: float, metrics: Any = None
) -> int:
    """Run ``workers`` copies of ``python -m fastpipe proxy <worker_argv> --listen HOST:PORT --reuse-port``.

    Each worker logs its own start and drain; the supervisor logs each worker it starts, each one that dies
    (and its replacement), the stop signal, and how every worker ended. With ``metrics`` (a listen
    address) the supervisor serves ``/metrics`` there: the sum over its workers, which write their
    numbers as JSON snapshots into a shared directory that the supervisor sums at each scrape.
    """
    environment = None
    metrics_server = None
    if metrics is not None:
        from ..gateway.metrics import prepare_multiprocess, serve_metrics

        directory = prepare_multiprocess()
        environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, METRICS_WORKER_ENV: "1"}
        metrics_server = serve_metrics(metrics.host, metrics.port, multiprocess_dir=directory)
        _say(f"metrics of all workers on http://{metrics}/metrics")
    try:
        return _supervise(worker_argv, workers, host, port, grace, environment)
    finally:
        if metrics_server is not None:
            metrics_server.close()
            from ..gateway.metrics import cleanup_multiprocess

            cleanup_multiprocess(directory)


def _supervise(
    worker_argv: Sequence[str], workers: int, host: str, port: int, grace: float, environment: dict[str, str] | None
) -> int:
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
                    if environment is not None:
                        _worker_exited(process.pid)
                    wait = max(0.0, RESTART_BACKOFF - (now - started_at[index]))
                    later = f" in {wait:.1f} s" if wait > 0.05 else ""
                    _say(f"worker {process.pid} {_describe_exit(process.returncode)}; starting a replacement{later}")
                    slots[index] = None
                if now - started_at[index] >= RESTART_BACKOFF and not stopping:
                    worker = slots[index] = subprocess.Popen(command, env=environment)
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


def _worker_exited(pid: int) -> None:
    """A dead worker's live gauges (open connections, tunnels) no longer count."""
    from ..gateway.metrics import worker_exited

    worker_exited(pid)
