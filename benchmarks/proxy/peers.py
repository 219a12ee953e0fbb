"""The peers: how each proxy is started on 127.0.0.1 in front of a given upstream, and stopped.

A peer is started fresh for every cell (so each measures from a clean process) pinned alone on the proxy core.
"none" starts nothing: the load goes straight to the origin. A peer that cannot run here (nginx not installed,
fastpipe's proxy not there yet, compiled Pipe not built) is skipped with the reason in the report.

Each peer lists the kinds of cell it takes part in (``Peer.kinds``): every peer the plaintext HTTP cells;
fastpipe and nginx also the TLS-upstream cells ("tls") and the WebSocket cells ("ws"); the bare relay the
WebSocket cells (it carries WebSocket bytes as they are) but not the TLS ones (relaying TLS bytes would be
TLS passthrough, not a proxy that terminates TLS towards the origin: a different thing); the Python proxies
only the plaintext HTTP cells. A peer may also name the only workloads it takes part in (``Peer.cells``):
``fastpipe-usage``, fastpipe serving a configuration file of one route with ``usage = "openai"``, runs the
SSE cell only (the origin's streams are OpenAI-shaped chunks; its other bodies are not what such a route is
for), so that its CPU per stream next to plain ``fastpipe``'s is the cost of usage capture; ``fastpipe-route``,
the same configuration file without usage capture, runs the small-request cell only: a gateway route's cost
per request next to nginx's.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from . import nginx
from .origin import HOST, Upstream
from .processes import REPO_ROOT, Managed, free_port, spawn

PEER_SCRIPTS = REPO_ROOT / "benchmarks" / "proxy" / "peers"


@dataclass
class RunningPeer:
    port: int
    process: Managed | None  # None: no proxy, the port is the origin's

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# launch(upstream, kind of cell, listening port, workdir, cpus): kind is "http", "tls" or "ws"
Launch = Callable[[Upstream, str, int, Path, "frozenset[int] | None"], Managed]
HTTP_ONLY = frozenset({"http"})
EVERY_KIND = frozenset({"http", "tls", "ws"})


@dataclass(frozen=True)
class Peer:
    name: str
    label: str
    kind: str  # "none" | "reference" | "relay" | "fastpipe" | "python"
    launch: Launch | None
    check: Callable[[], str | None]
    kinds: frozenset[str] = HTTP_ONLY  # the kinds of cell it takes part in: "http", "tls", "ws"
    cells: frozenset[str] | None = None  # the only workloads it takes part in (None: every one of its kinds)

    def takes(self, workload: str, kind: str) -> bool:
        """Whether it takes part in the workload of that name and kind."""
        return kind in self.kinds and (self.cells is None or workload in self.cells)

    def unavailable(self) -> str | None:
        """Why this peer cannot run here, or None."""
        return self.check()

    def start(self, upstream: Upstream, cell_kind: str, workdir: Path, cpus: frozenset[int] | None) -> RunningPeer:
        if self.launch is None:
            return RunningPeer(upstream.port, None)
        port = free_port()
        return RunningPeer(port, self.launch(upstream, cell_kind, port, workdir, cpus))


def python_script(script: str, name: str) -> Launch:
    def launch(upstream: Upstream, cell_kind: str, port: int, workdir: Path, cpus: frozenset[int] | None) -> Managed:
        argv = [sys.executable, str(PEER_SCRIPTS / script), "--upstream", upstream.url]
        return spawn(name, [*argv, "--listen", f"{HOST}:{port}"], log_dir=workdir / "logs", cpus=cpus)

    return launch


def fastpipe_cli(name: str, twin: bool) -> Launch:
    def launch(upstream: Upstream, cell_kind: str, port: int, workdir: Path, cpus: frozenset[int] | None) -> Managed:
        argv = [sys.executable, "-m", "fastpipe", "proxy", "--upstream", upstream.url]
        if upstream.tls is not None:  # verified against the run's CA, the certificate's name sent as SNI
            argv += ["--upstream-ca", str(upstream.tls.ca), "--upstream-sni", upstream.tls.name]
        env = {"FASTPIPE_NO_EXTENSIONS": "1"} if twin else None
        return spawn(name, [*argv, "--listen", f"{HOST}:{port}"], log_dir=workdir / "logs", cpus=cpus, env=env)

    return launch


# One route to the origin, as a gateway configuration file; {usage} is empty or a `usage = "..."` line.
ROUTE_TOML = """\
[upstreams.origin]
servers = ["{url}"]

[[routes]]
upstream = "origin"
{usage}"""


def fastpipe_route(name: str, usage: str | None) -> Launch:
    """fastpipe's proxy with ``--config``: one route to the cell's origin, with ``usage`` capture if given."""

    def launch(upstream: Upstream, cell_kind: str, port: int, workdir: Path, cpus: frozenset[int] | None) -> Managed:
        assert upstream.tls is None, "the route peers take plaintext cells only"
        config = workdir / f"{name}-{port}.toml"
        config.write_text(ROUTE_TOML.format(url=upstream.url, usage=f'usage = "{usage}"\n' if usage else ""))
        argv = [sys.executable, "-m", "fastpipe", "proxy", "--config", str(config), "--listen", f"{HOST}:{port}"]
        return spawn(name, argv, log_dir=workdir / "logs", cpus=cpus)

    return launch


def launch_nginx(upstream: Upstream, cell_kind: str, port: int, workdir: Path, cpus: frozenset[int] | None) -> Managed:
    root = workdir / f"nginx-proxy-{port}"
    return nginx.start_proxy(
        root, upstream.address, HOST, port, log_dir=workdir / "logs", cpus=cpus, variant=cell_kind, tls=upstream.tls
    )


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
        Peer("none", "no proxy (client to origin)", "none", None, always, EVERY_KIND),
        Peer("nginx", f"nginx {nginx.version()} proxy_pass", "reference", launch_nginx, nginx_missing, EVERY_KIND),
        Peer(
            "relay",
            "bare uvloop TCP relay",
            "relay",
            python_script("tcp_relay.py", "relay"),
            always,
            frozenset({"http", "ws"}),
        ),
        Peer(
            "fastpipe",
            "fastpipe proxy, compiled Pipe",
            "fastpipe",
            fastpipe_cli("fastpipe", False),
            compiled_pipe_missing,
            EVERY_KIND,
        ),
        Peer(
            "fastpipe-py",
            "fastpipe proxy, pure-Python twin",
            "fastpipe",
            fastpipe_cli("fastpipe-py", True),
            fastpipe_cli_missing,
            EVERY_KIND,
        ),
        Peer(
            "fastpipe-route",
            "fastpipe gateway route (--config)",
            "fastpipe",
            fastpipe_route("fastpipe-route", None),
            compiled_pipe_missing,
            HTTP_ONLY,
            frozenset({"small"}),
        ),
        Peer(
            "fastpipe-usage",
            'fastpipe gateway route, usage = "openai"',
            "fastpipe",
            fastpipe_route("fastpipe-usage", "openai"),
            compiled_pipe_missing,
            HTTP_ONLY,
            frozenset({"sse"}),
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
