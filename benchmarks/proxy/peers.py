"""The peers: how each proxy is started on 127.0.0.1 in front of a given upstream, and stopped.

A peer is started fresh for every cell (so each measures from a clean process) pinned alone on the proxy core.
"none" starts nothing: the load goes straight to the origin. A peer that cannot run here (nginx not installed,
fastpipe's proxy not there yet, compiled Pipe not built) is skipped with the reason in the report.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import nginx
from .origin import HOST
from .processes import REPO_ROOT, Managed, free_port, spawn

PEER_SCRIPTS = REPO_ROOT / "benchmarks" / "proxy" / "peers"


@dataclass
class RunningPeer:
    port: int
    process: Managed | None  # None: no proxy, the port is the origin's

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    kind: str  # "none" | "reference" | "relay" | "fastpipe" | "python"
    launch: Callable[[str, int, Path, frozenset[int] | None], Managed] | None
    check: Callable[[], str | None]

    def unavailable(self) -> str | None:
        """Why this peer cannot run here, or None."""
        return self.check()

    def start(self, upstream_port: int, workdir: Path, cpus: frozenset[int] | None) -> RunningPeer:
        if self.launch is None:
            return RunningPeer(upstream_port, None)
        port = free_port()
        upstream = f"{HOST}:{upstream_port}"
        return RunningPeer(port, self.launch(upstream, port, workdir, cpus))


def python_script(script: str, name: str) -> Callable[[str, int, Path, frozenset[int] | None], Managed]:
    def launch(upstream: str, port: int, workdir: Path, cpus: frozenset[int] | None) -> Managed:
        argv = [sys.executable, str(PEER_SCRIPTS / script), "--upstream", f"http://{upstream}"]
        return spawn(name, [*argv, "--listen", f"{HOST}:{port}"], log_dir=workdir / "logs", cpus=cpus)

    return launch


def fastpipe_cli(name: str, twin: bool) -> Callable[[str, int, Path, frozenset[int] | None], Managed]:
    def launch(upstream: str, port: int, workdir: Path, cpus: frozenset[int] | None) -> Managed:
        argv = [sys.executable, "-m", "fastpipe", "proxy", "--upstream", f"http://{upstream}"]
        env = {"FASTPIPE_NO_EXTENSIONS": "1"} if twin else None
        return spawn(name, [*argv, "--listen", f"{HOST}:{port}"], log_dir=workdir / "logs", cpus=cpus, env=env)

    return launch


def launch_nginx(upstream: str, port: int, workdir: Path, cpus: frozenset[int] | None) -> Managed:
    root = workdir / f"nginx-proxy-{port}"
    return nginx.start_proxy(root, upstream, HOST, port, log_dir=workdir / "logs", cpus=cpus)


def always() -> str | None:
    return None


def nginx_missing() -> str | None:
    return None if nginx.binary() else "nginx is not installed (apt-get install nginx)"


@cache
def fastpipe_cli_missing() -> str | None:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fastpipe", "proxy", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO_ROOT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`python -m fastpipe proxy --help` failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`python -m fastpipe proxy` is not available yet ({last})"
    return None


@cache
def compiled_pipe_missing() -> str | None:
    missing = fastpipe_cli_missing()
    if missing:
        return missing
    code = "import fastpipe, sys; sys.exit(0 if fastpipe.EXTENSION else 1)"
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO_ROOT, check=False, timeout=30)
    return None if done.returncode == 0 else "the compiled Pipe is not built (make build)"


PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer("none", "no proxy (client to origin)", "none", None, always),
        Peer("nginx", f"nginx {nginx.version()} proxy_pass", "reference", launch_nginx, nginx_missing),
        Peer("relay", "bare uvloop TCP relay", "relay", python_script("tcp_relay.py", "relay"), always),
        Peer(
            "fastpipe",
            "fastpipe proxy, compiled Pipe",
            "fastpipe",
            fastpipe_cli("fastpipe", False),
            compiled_pipe_missing,
        ),
        Peer(
            "fastpipe-py",
            "fastpipe proxy, pure-Python twin",
            "fastpipe",
            fastpipe_cli("fastpipe-py", True),
            fastpipe_cli_missing,
        ),
        Peer("aiohttp", "aiohttp proxy on uvloop", "python", python_script("aiohttp_proxy.py", "aiohttp"), always),
        Peer(
            "starlette",
            "Starlette + httpx on uvicorn",
            "python",
            python_script("starlette_proxy.py", "starlette"),
            always,
        ),
    )
}
