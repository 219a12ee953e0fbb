"""Start benchmark processes in their own process groups, and stop every one of them whatever happens.

Each process gets a new session (so Ctrl-C in the terminal reaches only the harness, which then stops the rest
in order) and is registered; ``stop_all`` runs from ``finally`` blocks, from ``atexit`` and on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 3.0


class StartError(RuntimeError):
    """A process did not come up: died early or never answered."""


@dataclass
class Managed:
    """One started process (and its process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    cpus: frozenset[int] | None
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def group_pids(self) -> list[int]:
        """Live members of this process group (an nginx master and its worker, say)."""
        return pids_in_group(self.pid)

    def log_tail(self, limit: int = 2000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-limit:]

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after a grace period; idempotent."""
        if self.stopped:
            return
        self.stopped = True
        for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Stragglers that left the leader behind (workers of a master that died first).
        for pid in pids_in_group(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if self in _REGISTRY:
            _REGISTRY.remove(self)


_REGISTRY: list[Managed] = []


def pids_in_group(pgid: int) -> list[int]:
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def pin_prefix(cpus: frozenset[int] | None) -> list[str]:
    if not cpus:
        return []
    if shutil.which("taskset"):
        return ["taskset", "-c", ",".join(str(cpu) for cpu in sorted(cpus))]
    return []


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    cpus: frozenset[int] | None = None,
    env: dict[str, str] | None = None,
    stdin: int | IO[bytes] | None = subprocess.DEVNULL,
    stdout: int | IO[bytes] | None = None,
) -> Managed:
    """Start ``argv`` in a new session, pinned to ``cpus``; stderr (and stdout unless given) go to a log file."""
    prefix = pin_prefix(cpus)
    log_path = log_dir / f"{name}.log"
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH", "")]))
    child_env.pop("FASTPIPE_NO_EXTENSIONS", None)
    if env:
        child_env.update(env)
    affinity = sorted(cpus) if cpus and not prefix else None
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [*prefix, *argv],
            stdin=stdin,
            stdout=log if stdout is None else stdout,
            stderr=log,
            cwd=REPO_ROOT,
            env=child_env,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None,
        )
    managed = Managed(name, popen, log_path, cpus)
    _REGISTRY.append(managed)
    return managed


def stop_all() -> None:
    for managed in reversed(list(_REGISTRY)):
        managed.stop()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup() -> None:
    """Stop everything on normal exit and on SIGINT/SIGTERM/SIGHUP, which all raise KeyboardInterrupt.

    SIGINT is installed explicitly because a shell starts background jobs with it ignored.
    """
    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def http_status(host: str, port: int, path: str, timeout: float = 2.0) -> int | None:
    """Status code of one GET over a fresh connection, or None when nothing answered."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            head = sock.recv(64)
    except OSError:
        return None
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def wait_http_ready(proc: Managed | None, host: str, port: int, path: str, timeout: float = 15.0) -> None:
    """Block until GET ``path`` answers 200, or raise StartError with the process's log."""
    deadline = time.monotonic() + timeout
    last: int | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise StartError(f"{proc.name} exited with {proc.popen.returncode}: {proc.log_tail()}")
        last = http_status(host, port, path)
        if last == 200:
            return
        time.sleep(0.05)
    name = proc.name if proc else f"{host}:{port}"
    tail = proc.log_tail() if proc else ""
    raise StartError(f"{name} did not answer 200 on {path} within {timeout:.0f} s (last: {last}) {tail}")


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by every child) towards ``wanted``; return the soft limit reached."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    for new_soft, new_hard in ((wanted, max(hard, wanted)), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, new_hard))
            return new_soft
        except (ValueError, OSError):
            continue
    return soft
