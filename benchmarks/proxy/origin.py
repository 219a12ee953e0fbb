"""The origins every peer proxies to, all on the load core for the whole run.

* static files (``/1k``, ``/16m``): nginx, over plaintext and, for the TLS cells, over TLS on a second port;
* paced SSE streams: a small Python origin (``peers/origin_server.py``), which also serves the static paths
  (and their TLS port) when nginx is absent;
* WebSocket echo: ``peers/ws_origin.py``, hand-written on uvloop so that the origin is never the bottleneck.

The TLS origin's certificate comes from a throwaway CA made at run time (``trustme``) for the name
``tls.ORIGIN_NAME`` and 127.0.0.1; the PEM files are written to the run's work directory and die with it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import nginx
from .processes import REPO_ROOT, Managed, StartError, free_port, spawn, wait_http_ready
from .tls import TlsFiles, make_tls_files, tls_get

HOST = "127.0.0.1"
SMALL_PATH = "/1k"
BULK_PATH = "/16m"
WS_PATH = "/echo"
BODIES = {SMALL_PATH: 1024, BULK_PATH: 16 * 1024 * 1024}
PY_ORIGIN = REPO_ROOT / "benchmarks" / "proxy" / "peers" / "origin_server.py"
WS_ORIGIN = REPO_ROOT / "benchmarks" / "proxy" / "peers" / "ws_origin.py"


@dataclass(frozen=True)
class Upstream:
    """Where a peer sends its requests: an origin port, over TLS or not."""

    port: int
    tls: TlsFiles | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return ("https" if self.tls else "http") + f"://{self.address}"


@dataclass
class Origins:
    static_port: int  # /1k and /16m
    stream_port: int  # /sse
    static_server: str  # "nginx 1.22.1" or "python"
    processes: list[Managed]
    tls_port: int | None = None  # /1k and /16m over TLS
    tls: TlsFiles | None = None
    ws_port: int | None = None  # WebSocket echo
    notes: list[str] = field(default_factory=list)

    def upstream(self, kind: str) -> Upstream:
        """The origin of a workload's kind: "static", "stream", "tls" or "ws"."""
        if kind == "tls":
            assert self.tls_port is not None and self.tls is not None, "the TLS origin was not started"
            return Upstream(self.tls_port, self.tls)
        if kind == "ws":
            assert self.ws_port is not None, "the WebSocket origin was not started"
            return Upstream(self.ws_port)
        return Upstream(self.stream_port if kind == "stream" else self.static_port)


def write_docroot(docroot: Path) -> None:
    docroot.mkdir(parents=True, exist_ok=True)
    for path, size in BODIES.items():
        target = docroot / path.lstrip("/")
        if not target.exists() or target.stat().st_size != size:
            target.write_bytes(b"x" * size)


def start(
    workdir: Path, *, cpus: frozenset[int] | None, use_nginx: bool, tls: bool = False, ws: bool = False
) -> Origins:
    """Start the origins the run needs and wait until each answers."""
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
    origins = Origins(stream_port, stream_port, "python", processes)
    tls_files = make_tls_files(workdir / "tls") if tls else None
    tls_port = free_port() if tls else None
    if use_nginx:
        docroot = workdir / "www"
        write_docroot(docroot)
        origins.static_port = free_port()
        origin = nginx.start_origin(
            workdir / "nginx-origin",
            docroot,
            HOST,
            origins.static_port,
            log_dir=log_dir,
            cpus=cpus,
            tls_port=tls_port,
            tls=tls_files,
        )
        processes.append(origin)
        wait_http_ready(origin, HOST, origins.static_port, SMALL_PATH)
        origins.static_server = f"nginx {nginx.version()}"
    elif tls_files is not None:
        argv = [sys.executable, str(PY_ORIGIN), "--listen", f"{HOST}:{tls_port}"]
        argv += ["--certfile", str(tls_files.cert), "--keyfile", str(tls_files.key)]
        processes.append(spawn("origin-python-tls", argv, log_dir=log_dir, cpus=cpus))
    if tls_files is not None:
        assert tls_port is not None
        wait_tls_ready(processes[-1], tls_port, tls_files)
        origins.tls_port, origins.tls = tls_port, tls_files
    if ws:
        origins.ws_port = free_port()
        echo = spawn(
            "origin-ws",
            [sys.executable, str(WS_ORIGIN), "--listen", f"{HOST}:{origins.ws_port}"],
            log_dir=log_dir,
            cpus=cpus,
        )
        processes.append(echo)
        wait_http_ready(echo, HOST, origins.ws_port, SMALL_PATH)
    return origins


def wait_tls_ready(process: Managed, port: int, files: TlsFiles, timeout: float = 15.0) -> None:
    """Block until the TLS origin answers 200 on a verified connection."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not process.alive():
            raise StartError(f"{process.name} exited with {process.popen.returncode}: {process.log_tail()}")
        try:
            answer = tls_get(port, files, SMALL_PATH)
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if answer.startswith(b"HTTP/1.1 200"):
                return
            last = repr(answer[:40])
        time.sleep(0.05)
    raise StartError(f"the TLS origin did not answer 200 on {SMALL_PATH} within {timeout:.0f} s ({last})")
