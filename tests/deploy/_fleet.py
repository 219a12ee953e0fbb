"""Real processes for the deployment tests: the built-in origin, ``fastpipe proxy`` instances and HAProxy.

Every process writes its output to a file in the test's directory (shown when a test fails), every wait is
bounded, and :meth:`Fleet.close` ends whatever is still running — workers first — even after a failure.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from ._traffic import Exchange

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

_ORIGIN = """
import asyncio, sys
from fastpipe._origin import start_origin

async def main():
    server = await start_origin()
    print("origin listening on", server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def haproxy_binary() -> str:
    """HAProxy's path; skips the test where it is not installed, but fails in CI, which must install it."""
    found = shutil.which("haproxy") or next(
        (path for path in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(path, os.X_OK)), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed: CI must install it (apt-get install haproxy)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return found


async def wait_for_line(path: Path, pattern: re.Pattern[str], *, count: int = 1, timeout: float = 20.0) -> list[str]:
    """The first ``count`` matches of ``pattern`` in the file, waiting (bounded) for them to be written."""
    deadline = time.monotonic() + timeout
    while True:
        matches = pattern.findall(path.read_text(errors="replace")) if path.exists() else []
        if len(matches) >= count:
            return matches[:count]
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name}: {pattern.pattern!r} x{count} not seen in {timeout} s:\n{tail(path)}")
        await asyncio.sleep(0.05)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def http_ok(port: int, target: str = "/bytes?n=16", timeout: float = 2.0) -> bool:
    """Whether a GET straight to ``port`` gets a 200 (one bounded try)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n" % target.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        return head.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout)
        except (OSError, asyncio.TimeoutError):
            pass


@dataclass
class Process:
    """One child process with its output in ``log``."""

    name: str
    command: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as output:
            self.popen = subprocess.Popen(self.command, stdout=output, stderr=subprocess.STDOUT, env=ENV)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    async def wait(self, timeout: float) -> int:
        """The exit status, waiting at most ``timeout`` seconds."""
        assert self.popen is not None
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not exit within {timeout} s:\n{tail(self.log)}")
            await asyncio.sleep(0.05)
        return self.popen.returncode

    def kill_tree(self) -> None:
        """SIGKILL the process and every descendant (workers of a supervisor included), then reap it."""
        if self.popen is None:
            return
        try:
            family = [*psutil.Process(self.popen.pid).children(recursive=True)]
        except psutil.Error:
            family = []
        if self.popen.poll() is None:
            self.popen.kill()
        for child in family:
            try:
                child.kill()
            except psutil.Error:
                pass
        self.popen.wait(10)
        psutil.wait_procs(family, timeout=10)


@dataclass
class Instance:
    """``fastpipe proxy --workers N`` on a fixed port, restartable on that port."""

    name: str
    port: int
    upstream: str
    directory: Path
    workers: int = 2
    grace: float = 2.0
    extra: tuple[str, ...] = ()
    runs: list[Process] = field(default_factory=list)

    @property
    def current(self) -> Process:
        return self.runs[-1]

    def start(self) -> None:
        command = [sys.executable, "-m", "fastpipe", "proxy", "--upstream", self.upstream]
        command += ["--listen", f"127.0.0.1:{self.port}", "--workers", str(self.workers)]
        command += ["--shutdown-grace", str(self.grace), *self.extra]
        run = Process(
            f"{self.name}#{len(self.runs) + 1}", command, self.directory / f"{self.name}-{len(self.runs) + 1}.log"
        )
        self.runs.append(run)
        run.start()

    async def wait_serving(self, timeout: float = 30.0) -> None:
        """Until every worker says it listens and a request straight to the port is answered."""
        await wait_for_line(self.current.log, re.compile(r"proxy listening on"), count=self.workers, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not await http_ok(self.port):
            if time.monotonic() > deadline or not self.current.running():
                raise AssertionError(f"{self.current.name} does not serve:\n{tail(self.current.log)}")
            await asyncio.sleep(0.05)

    def worker_processes(self) -> list[psutil.Process]:
        """The live workers of the current run that listen on the port."""
        try:
            children = psutil.Process(self.current.pid).children()
        except psutil.Error:
            return []
        listening = []
        for child in children:
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                if any(
                    c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in child.net_connections("tcp")
                ):
                    listening.append(child)
            except psutil.Error:
                continue
        return listening

    def log_text(self) -> str:
        return "\n".join(run.log.read_text(errors="replace") for run in self.runs if run.log.exists())


@dataclass
class Backend:
    """One line of HAProxy's log: a client connection, which server took it, and when."""

    client_port: int
    accepted: float  # wall clock
    server: str
    total_ms: int
    termination: str

    @property
    def ended(self) -> float:
        return self.accepted + self.total_ms / 1000


class HAProxy:
    """HAProxy in TCP mode, in the foreground (``-db``), with an admin socket and a log line per connection."""

    BACKEND = "fastpipe"

    def __init__(
        self,
        directory: Path,
        port: int,
        servers: dict[str, int],
        *,
        check: tuple[str, ...] = (),
        balance: str = "leastconn",
    ) -> None:
        self.port = port
        self.servers = servers
        self.socket_path = directory / "haproxy.sock"
        self.config = directory / "haproxy.cfg"
        lines = [
            "global",
            "    log stdout format raw local0",
            f"    stats socket {self.socket_path} mode 600 level admin",
            "    maxconn 2000",
            "defaults",
            "    mode tcp",
            "    log global",
            '    log-format "conn %cp %Ts.%ms %s %Tt %ts"',
            "    timeout connect 2s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    retries 3",
            "    option redispatch",
            "frontend fleet",
            f"    bind 127.0.0.1:{port}",
            f"    default_backend {self.BACKEND}",
            f"backend {self.BACKEND}",
            f"    balance {balance}",
            *(f"    {line}" for line in check),
            "    default-server check inter 200ms fall 2 rise 2",
            *(f"    server {name} 127.0.0.1:{server_port}" for name, server_port in servers.items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.process = Process("haproxy", [haproxy_binary(), "-db", "-f", str(self.config)], directory / "haproxy.log")

    def start(self) -> None:
        check = subprocess.run(
            [*self.process.command[:1], "-c", "-f", str(self.config)], capture_output=True, timeout=20, check=False
        )
        assert check.returncode == 0, f"haproxy rejects its configuration:\n{check.stdout!r}\n{check.stderr!r}"
        self.process.start()

    async def command(self, text: str, timeout: float = 5.0) -> str:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.socket_path)), timeout)
        try:
            writer.write(text.encode() + b"\n")
            return (await asyncio.wait_for(reader.read(), timeout)).decode()
        finally:
            writer.close()
            await writer.wait_closed()

    async def statuses(self) -> dict[str, str]:
        """server name -> HAProxy's status for it (UP, DOWN, DRAIN, MAINT, ...)."""
        text = await self.command("show stat")
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == self.BACKEND and row["svname"] in self.servers
        }

    async def wait_status(self, server: str, wanted: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = (await self.statuses()).get(server, "?")
            except (OSError, asyncio.TimeoutError):
                status = "no admin socket yet"
            if status.startswith(wanted):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy: {server} is {status}, not {wanted}, after {timeout} s")
            await asyncio.sleep(0.05)

    async def set_state(self, server: str, state: str) -> None:
        answer = await self.command(f"set server {self.BACKEND}/{server} state {state}")
        assert answer.strip() == "", f"haproxy refused 'state {state}' for {server}: {answer!r}"

    def connections(self) -> list[Backend]:
        """Every connection HAProxy logged so far (logged as each ends)."""
        found = []
        for match in re.finditer(r"^conn (\d+) (\d+)\.(\d+) (\S+) (-?\d+) (\S+)$", self.process.log.read_text(), re.M):
            port, seconds, millis, server, total, termination = match.groups()
            found.append(Backend(int(port), int(seconds) + int(millis) / 1000, server, int(total), termination))
        return found


def assign_servers(exchanges: list[Exchange], connections: list[Backend]) -> None:
    """Set ``exchange.server`` from the balancer's log: same client port, and the exchange inside that
    connection's lifetime (a port can come back later for another connection)."""
    by_port: dict[int, list[Backend]] = {}
    for connection in connections:
        by_port.setdefault(connection.client_port, []).append(connection)
    for exchange in exchanges:
        for connection in by_port.get(exchange.port, ()):
            if connection.accepted - 1.0 <= exchange.started <= connection.ended + 1.0:
                exchange.server = connection.server
                break


@dataclass
class Fleet:
    """Everything a test started, ended by :meth:`close`."""

    directory: Path
    processes: list[Process] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)

    async def origin(self) -> str:
        process = Process("origin", [sys.executable, "-c", _ORIGIN], self.directory / "origin.log")
        self.processes.append(process)
        process.start()
        (port,) = await wait_for_line(process.log, re.compile(r"origin listening on (\d+)"))
        return f"http://127.0.0.1:{port}"

    def instance(self, name: str, upstream: str, **options: object) -> Instance:
        instance = Instance(name, free_port(), upstream, self.directory, **options)  # type: ignore[arg-type]
        self.instances.append(instance)
        return instance

    def adopt(self, process: Process) -> None:
        self.processes.append(process)

    def close(self) -> None:
        for instance in self.instances:
            for run in instance.runs:
                run.kill_tree()
        for process in reversed(self.processes):
            process.kill_tree()

    def logs(self) -> str:
        parts = [f"--- {run.log.name}\n{tail(run.log)}" for instance in self.instances for run in instance.runs]
        parts += [f"--- {process.log.name}\n{tail(process.log)}" for process in self.processes]
        return "\n".join(parts)


def sigterm(process: Process) -> float:
    """Send SIGTERM; the wall-clock moment it was sent."""
    assert process.popen is not None
    moment = time.time()
    process.popen.send_signal(signal.SIGTERM)
    return moment
