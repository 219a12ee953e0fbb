"""The origin every peer proxies to: nginx serving static files, and a small Python origin for SSE streams.

Both stay up for the whole harness run, pinned with the load generator. Without nginx, the Python origin
serves the static paths too (same paths, same bodies), and the report says so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import nginx
from .processes import REPO_ROOT, Managed, free_port, spawn, wait_http_ready

HOST = "127.0.0.1"
SMALL_PATH = "/1k"
BULK_PATH = "/16m"
BODIES = {SMALL_PATH: 1024, BULK_PATH: 16 * 1024 * 1024}
PY_ORIGIN = REPO_ROOT / "benchmarks" / "proxy" / "peers" / "origin_server.py"


@dataclass
class Origins:
    static_port: int  # /1k and /16m
    stream_port: int  # /sse
    static_server: str  # "nginx 1.22.1" or "python"
    processes: list[Managed]

    def upstream(self, port: int) -> str:
        return f"http://{HOST}:{port}"


def write_docroot(docroot: Path) -> None:
    docroot.mkdir(parents=True, exist_ok=True)
    for path, size in BODIES.items():
        target = docroot / path.lstrip("/")
        if not target.exists() or target.stat().st_size != size:
            target.write_bytes(b"x" * size)


def start(workdir: Path, *, cpus: frozenset[int] | None, use_nginx: bool) -> Origins:
    """Start the origins and wait until each answers."""
    log_dir = workdir / "logs"
    stream_port = free_port()
    python_origin = spawn(
        "origin-python",
        [sys.executable, str(PY_ORIGIN), "--listen", f"{HOST}:{stream_port}"],
        log_dir=log_dir,
        cpus=cpus,
    )
    processes = [python_origin]
    wait_http_ready(python_origin, HOST, stream_port, SMALL_PATH)
    if not use_nginx:
        return Origins(stream_port, stream_port, "python", processes)
    docroot = workdir / "www"
    write_docroot(docroot)
    static_port = free_port()
    origin = nginx.start_origin(workdir / "nginx-origin", docroot, HOST, static_port, log_dir=log_dir, cpus=cpus)
    processes.append(origin)
    wait_http_ready(origin, HOST, static_port, SMALL_PATH)
    return Origins(static_port, stream_port, f"nginx {nginx.version()}", processes)
