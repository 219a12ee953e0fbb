"""The ``fastpipe`` command as a subprocess: round trip, SIGTERM, bounded memory, --workers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psutil
import pytest

from fastpipe._origin import payload_sha256, start_origin

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


@pytest.fixture
async def origin_url() -> AsyncIterator[str]:
    server = await start_origin()
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    await server.wait_closed()


class Cli:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


async def _launch(*args: str) -> Cli:
    """Start ``python -m fastpipe proxy ... --listen 127.0.0.1:0`` and wait (bounded) for its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fastpipe", "proxy", "--listen", "127.0.0.1:0", *args],
        stderr=subprocess.PIPE,
        env=ENV,
    )
    assert process.stderr is not None
    loop = asyncio.get_running_loop()
    line = await asyncio.wait_for(loop.run_in_executor(None, process.stderr.readline), 20)
    match = LISTENING.search(line)
    if match is None:
        process.kill()
        process.wait()
        raise AssertionError(f"the proxy did not start: {line!r}")
    return Cli(process, int(match.group(1)))


@pytest.fixture
def cli_processes() -> Iterator[list[Cli]]:
    started: list[Cli] = []
    yield started
    for cli in started:
        if cli.process.poll() is None:
            cli.process.kill()
        cli.process.wait(10)
        if cli.process.stderr is not None:
            cli.process.stderr.close()


async def test_cli_round_trip_and_graceful_sigterm(origin_url: str, cli_processes: list[Cli]) -> None:
    cli = await _launch("--upstream", origin_url, "--access-log")
    cli_processes.append(cli)
    async with httpx.AsyncClient(base_url=cli.url) as client:
        response = await client.get("/bytes?n=123456&seed=2")
        echoed = await client.post("/echo", content=b"ping" * 1000)
    assert hashlib.sha256(response.content).hexdigest() == payload_sha256(123456, seed=2)
    assert echoed.content == b"ping" * 1000
    cli.process.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    code = await asyncio.wait_for(loop.run_in_executor(None, cli.process.wait), 15)
    assert code == 0
    assert cli.process.stderr is not None
    rest = cli.process.stderr.read()
    assert b'"GET /bytes?n=123456&seed=2" 200' in rest  # the access log
    assert b"shutting down" in rest


async def test_cli_stock_loop_flag(origin_url: str, cli_processes: list[Cli]) -> None:
    cli = await _launch("--upstream", origin_url, "--stock-loop")
    cli_processes.append(cli)
    async with httpx.AsyncClient(base_url=cli.url) as client:
        assert (await client.get("/bytes?n=10")).status_code == 200


async def test_cli_limit_flags_reach_the_proxy(origin_url: str, cli_processes: list[Cli]) -> None:
    """--abort-on-client-eof: a client leaving a silent stream ends it at once, which the access log shows
    (without the flag the stream would still be in flight at SIGTERM and end as a shutdown)."""
    cli = await _launch("--upstream", origin_url, "--access-log", "--abort-on-client-eof", "--shutdown-grace", "0.5")
    cli_processes.append(cli)
    reader, writer = await asyncio.open_connection("127.0.0.1", cli.port)
    writer.write(b"GET /tokens?n=3&delay=30 HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"data: "), 10)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.5)
    cli.process.send_signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    assert await asyncio.wait_for(loop.run_in_executor(None, cli.process.wait), 15) == 0
    assert cli.process.stderr is not None
    log = cli.process.stderr.read()
    assert b'"GET /tokens?n=3&delay=30" 200' in log
    assert b"end=client gone" in log


def test_cli_rejects_a_bad_upstream() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastpipe", "proxy", "--upstream", "ftp://example.test", "--listen", "127.0.0.1:0"],
        capture_output=True,
        env=ENV,
        timeout=20,
    )
    assert result.returncode != 0
    assert b"only http:// and https:// upstreams" in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_slow_256_mib_download_keeps_proxy_memory_bounded(origin_url: str, cli_processes: list[Cli]) -> None:
    """A client reading slowly: the proxy's RSS grows by less than 32 MiB over a 256 MiB body."""
    cli = await _launch("--upstream", origin_url)
    cli_processes.append(cli)
    proxy = psutil.Process(cli.process.pid)
    size = 256 * 1024 * 1024
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", cli.port))
    baseline = proxy.memory_info().rss
    peak = baseline
    digest = hashlib.sha256()
    received = 0
    head = b""
    try:
        await loop.sock_sendall(sock, b"GET /bytes?n=%d&seed=11 HTTP/1.1\r\nHost: t\r\n\r\n" % size)
        while b"\r\n\r\n" not in head:
            head += await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
        head, _, first = head.partition(b"\r\n\r\n")
        digest.update(first)
        received = len(first)
        reads = 0
        while received < size:
            data = await asyncio.wait_for(loop.sock_recv(sock, 128 * 1024), 10)
            assert data, "the proxy closed early"
            digest.update(data)
            received += len(data)
            reads += 1
            await asyncio.sleep(0.0005)  # a slow reader: the origin outpaces it, the proxy must park
            if reads % 32 == 0:
                peak = max(peak, proxy.memory_info().rss)
    finally:
        sock.close()
    assert received == size
    assert digest.hexdigest() == payload_sha256(size, seed=11)
    growth = peak - baseline
    assert growth < 32 * 1024 * 1024, f"proxy RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.slow
async def test_workers_share_the_port_and_a_crashed_worker_is_restarted(origin_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastpipe",
            "proxy",
            "--upstream",
            origin_url,
            "--listen",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
        ],
        stderr=subprocess.PIPE,
        env=ENV,
    )
    loop = asyncio.get_running_loop()
    try:
        workers = await _children(supervisor.pid, 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(10):
                assert (await client.get("/bytes?n=100")).status_code == 200
        victim = workers[0]
        victim.kill()
        replaced = await _children(supervisor.pid, 2, excluding={victim.pid})
        assert victim.pid not in {worker.pid for worker in replaced}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(10):
                assert (await client.get("/bytes?n=100")).status_code == 200
        supervisor.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(loop.run_in_executor(None, supervisor.wait), 20)
        assert code == 0
        assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in replaced)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.wait(10)
        for child in psutil.Process().children(recursive=True):
            child.kill()
        if supervisor.stderr is not None:
            supervisor.stderr.close()


async def _children(pid: int, count: int, excluding: set[int] | None = None) -> list[psutil.Process]:
    """Wait (bounded) until ``pid`` has ``count`` live children that listen, none of them in ``excluding``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = [
            child
            for child in psutil.Process(pid).children()
            if child.pid not in (excluding or set()) and child.status() != psutil.STATUS_ZOMBIE
        ]
        listening = [child for child in children if _listens(child)]
        if len(listening) >= count:
            return listening
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} listening workers did not appear")


def _listens(process: psutil.Process) -> bool:
    try:
        return any(connection.status == psutil.CONN_LISTEN for connection in process.net_connections("tcp"))
    except psutil.Error:
        return False


def test_demo_proxy_command_runs_and_checks_integrity() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastpipe",
            "demo",
            "proxy",
            "--scale",
            "0.02",
            "--streams",
            "3",
            "--downloads",
            "2",
            "--uploads",
            "2",
        ],
        capture_output=True,
        env=ENV,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert b"every body arrived whole" in result.stdout
    assert result.stdout.count(b" ok") == 3


async def test_cli_health_path_answers_without_the_upstream(cli_processes: list[Cli]) -> None:
    """--health-path is answered by the proxy itself: 200 even though nothing listens upstream."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # closed again: connecting there is refused
    cli = await _launch("--upstream", f"http://127.0.0.1:{dead_port}", "--health-path", "/healthz")
    cli_processes.append(cli)
    async with httpx.AsyncClient(base_url=cli.url) as client:
        health = await client.get("/healthz?probe=1")
        proxied = await client.get("/bytes?n=10")
    assert (health.status_code, health.text) == (200, "ok\n")
    assert proxied.status_code == 502


def test_cli_rejects_a_bad_health_path() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fastpipe", "proxy", "--upstream", "http://127.0.0.1:1", "--health-path", "healthz"],
        capture_output=True,
        env=ENV,
        timeout=20,
    )
    assert result.returncode == 2
    assert b"--health-path wants an absolute path like /healthz" in result.stderr


async def test_cli_logs_each_stage_of_a_drain(origin_url: str, cli_processes: list[Cli]) -> None:
    """SIGTERM with one stream that outlives the grace and one idle connection: the log says what happened."""
    cli = await _launch("--upstream", origin_url, "--shutdown-grace", "1.5")
    cli_processes.append(cli)
    streaming = await asyncio.open_connection("127.0.0.1", cli.port)
    idle = await asyncio.open_connection("127.0.0.1", cli.port)
    try:
        streaming[1].write(b"GET /tokens?n=100&delay=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(streaming[0].readuntil(b"data: "), 10)
        await asyncio.sleep(0.2)  # the idle connection is accepted
        cli.process.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.run_in_executor(None, cli.process.wait), 15) == 0
        try:
            rest = await asyncio.wait_for(streaming[0].read(), 5)
        except ConnectionResetError:
            rest = b"(reset)"
        assert not rest.endswith(b"0\r\n\r\n"), "the stream past the grace must end visibly truncated"
    finally:
        for _, writer in (streaming, idle):
            writer.close()
    assert cli.process.stderr is not None
    log = cli.process.stderr.read().decode()
    assert re.search(
        r"SIGTERM: shutting down: stopped accepting; draining 1 connection with an exchange in flight, "
        r"closing 1 idle; grace 1\.5 s",
        log,
    ), log
    assert "draining: 1 connection still in flight after 1 s of 1.5 s" in log, log
    assert "grace deadline: cut 1 connection still in flight after 1.5 s; stopped" in log, log


async def test_cli_logs_a_drain_that_finishes_in_time(origin_url: str, cli_processes: list[Cli]) -> None:
    cli = await _launch("--upstream", origin_url, "--shutdown-grace", "10")
    cli_processes.append(cli)
    reader, writer = await asyncio.open_connection("127.0.0.1", cli.port)
    try:
        writer.write(b"GET /tokens?n=10&delay=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"data: "), 10)
        cli.process.send_signal(signal.SIGTERM)
        body = await asyncio.wait_for(reader.read(), 10)
        assert body.endswith(b"0\r\n\r\n")  # finished whole, then closed
        loop = asyncio.get_running_loop()
        assert await asyncio.wait_for(loop.run_in_executor(None, cli.process.wait), 15) == 0
    finally:
        writer.close()
    assert cli.process.stderr is not None
    log = cli.process.stderr.read().decode()
    assert "draining 1 connection with an exchange in flight, closing 0 idle; grace 10 s" in log, log
    assert re.search(r"drained: every exchange in flight finished \(0\.\d\d s\); stopped", log), log


async def test_workers_survive_a_stop_signal_sent_to_the_whole_group(origin_url: str) -> None:
    """systemd's default KillMode and a terminal's Ctrl-C signal every process, and the supervisor forwards
    its signal too: a worker gets SIGTERM twice, and the second must not cut the drain short."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "fastpipe", "proxy", "--upstream", origin_url, "--listen", f"127.0.0.1:{port}"]
    supervisor = subprocess.Popen(
        [*command, "--workers", "2", "--shutdown-grace", "10"],
        stderr=subprocess.PIPE,
        env=ENV,
    )
    loop = asyncio.get_running_loop()
    try:
        workers = await _children(supervisor.pid, 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /tokens?n=20&delay=0.05 HTTP/1.1\r\nHost: t\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"data: "), 10)
            for process in (supervisor, *workers):  # as systemd does: all at once
                process.send_signal(signal.SIGTERM)
            body = await asyncio.wait_for(reader.read(), 15)
        finally:
            writer.close()
        assert body.endswith(b"0\r\n\r\n"), "the stream in flight was cut"
        assert await asyncio.wait_for(loop.run_in_executor(None, supervisor.wait), 20) == 0
        assert supervisor.stderr is not None
        log = supervisor.stderr.read().decode()
        # A worker sees the second SIGTERM ("SIGTERM again" in the log) unless both arrived before it handled
        # the first: pending signals of one kind merge. Either way no worker may die of it.
        assert "killed by" not in log and log.count("exited with status 0") == 2, log
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.wait(10)
        for child in psutil.Process().children(recursive=True):
            child.kill()
        if supervisor.stderr is not None:
            supervisor.stderr.close()
