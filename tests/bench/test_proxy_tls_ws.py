"""The TLS-upstream and WebSocket cells of the proxy harness, and the parts they are built from.

The WebSocket echo origin and the raw-frame load client are checked against the ``websockets`` library first
(a fast test); then the harness runs the new cells end to end in a tiny configuration: once with nothing
outside the venv (Python origins, Python load client), once with nginx and wrk as the full harness uses them.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from benchmarks.proxy import clients, origin, tls
from benchmarks.proxy.peers import PEERS
from benchmarks.proxy.processes import free_port, wait_http_ready

from .conftest import REPO_ROOT
from .test_proxy_harness import MISSING, cells_by_key, run_harness

# The compiled Pipe when it is built (CI also runs the suite without it), else the twin: same proxy, same cells.
FASTPIPE = "fastpipe" if PEERS["fastpipe"].unavailable() is None else "fastpipe-py"
NEW_CELLS = ("small-tls", "bulk-tls", "ws-small", "ws-bulk")


@pytest.fixture
def echo_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    argv = [sys.executable, str(origin.WS_ORIGIN), "--listen", f"127.0.0.1:{port}"]
    with open(tmp_path / "echo.log", "wb") as log:
        process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=log)
    try:
        for _ in range(100):  # bounded: 5 s
            try:
                wait_http_ready(None, "127.0.0.1", port, "/1k", timeout=0.05)
                break
            except Exception:
                if process.poll() is not None:
                    raise
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def test_echo_origin_speaks_websocket_to_the_websockets_library(echo_port: int) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{echo_port}/echo", max_size=None) as ws:
        for message in ("hello", "x" * 200, b"\x00\xff" * 40_000, "é" * 70_000):
            await ws.send(message)  # the library masks with random keys: the origin unmasks
            assert await asyncio.wait_for(ws.recv(), 5) == message
        await ws.send(["frag", "mented"])  # a fragmented message comes back whole
        assert await asyncio.wait_for(ws.recv(), 5) == "fragmented"
        await asyncio.wait_for(await ws.ping(b"p"), 5)
    assert ws.close_code == 1000


@pytest.mark.parametrize("size", [1024, 300_000])
async def test_raw_frame_client_counts_echoed_messages(echo_port: int, size: int) -> None:
    result = await clients.run_websockets(f"http://127.0.0.1:{echo_port}/echo", 3, 0.3, size)
    assert result["errors"] == 0
    messages = result["requests"]
    assert isinstance(messages, int) and messages > 3
    assert result["bytes"] == 2 * size * messages


async def test_raw_frame_client_counts_an_echo_that_differs_as_an_error() -> None:
    async def wrong_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(wrong_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await clients.run_websockets(f"http://127.0.0.1:{port}/echo", 2, 0.2, 1024)
    assert result["requests"] == 0 and result["errors"] == 2  # a wrong Sec-WebSocket-Accept fails the handshake


def test_throwaway_tls_files_verify_for_the_origin_name_only(tmp_path: Path) -> None:
    files = tls.make_tls_files(tmp_path)
    assert files.key.stat().st_mode & 0o077 == 0
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(files.cert, files.key)
    client = ssl.create_default_context(cafile=str(files.ca))
    for name, ok in ((tls.ORIGIN_NAME, True), ("other.test", False)):
        a, b = ssl.MemoryBIO(), ssl.MemoryBIO()
        c, d = ssl.MemoryBIO(), ssl.MemoryBIO()
        left = client.wrap_bio(a, b, server_hostname=name)
        right = server.wrap_bio(c, d, server_side=True)
        failed = False
        for _ in range(10):  # a handshake over memory: a few round trips
            for side, out_bio, in_bio in ((left, b, c), (right, d, a)):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    failed = True
                in_bio.write(out_bio.read())
        assert failed is not ok, name


@pytest.mark.slow
def test_install_free_run_of_the_tls_and_websocket_cells(tmp_path: Path) -> None:
    data, progress = run_harness(
        tmp_path,
        "--no-wrk",
        "--no-nginx",
        "--only", "none", "relay", FASTPIPE,
        "--cells", ",".join(NEW_CELLS),
        "--connections", "4",
        "--bulk-connections", "1",
        "--ws-bulk-message-size", str(256 * 1024),
        "--duration", "0.5",
        "--warmup", "0",
        timeout=55,
    )  # fmt: skip
    cells = cells_by_key(data)
    expected = {("none", w) for w in NEW_CELLS} | {(FASTPIPE, w) for w in NEW_CELLS}
    expected |= {("relay", "ws-small"), ("relay", "ws-bulk")}  # the relay takes no part in the TLS cells
    assert set(cells) == expected
    assert all(cell["error"] is None for cell in cells.values()), [c["error"] for c in cells.values()]
    assert "[10/10] run 1/1 ws-bulk" in progress
    for (peer, workload), cell in cells.items():
        assert cell["errors"] == 0 and cell["requests"] > 0, (peer, workload)
        if peer != "none":
            assert cell["cost"] is not None and cell["cost"] > 0, (peer, workload)
    assert cells[(FASTPIPE, "bulk-tls")]["bytes"] >= 16 * 1024 * 1024
    assert 1.0 < cells[(FASTPIPE, "small-tls")]["cost"] < 20_000.0  # µs per request
    assert 1.0 < cells[(FASTPIPE, "ws-small")]["cost"] < 20_000.0  # µs per message
    ws_bulk = cells[("relay", "ws-bulk")]
    assert ws_bulk["bytes"] == 2 * 256 * 1024 * ws_bulk["requests"] and 0.01 < ws_bulk["cost"] < 100.0
    markdown = (tmp_path / "r.md").read_text()
    assert "**TLS upstream and WebSocket cells**" in markdown
    assert "**CPU cost of the proxy**" not in markdown  # no plaintext HTTP cell ran: no empty table
    assert "| CPU per GiB, WebSocket bulk <= 1.2x bare relay |" in markdown or FASTPIPE != "fastpipe"


@pytest.mark.slow
@pytest.mark.skipif(bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (apt-get install nginx wrk)")
def test_nginx_and_fastpipe_in_the_tls_and_websocket_cells_under_wrk(tmp_path: Path) -> None:
    data, _ = run_harness(
        tmp_path,
        "--only", "nginx", FASTPIPE,
        "--cells", ",".join(NEW_CELLS),
        "--connections", "16",
        "--bulk-connections", "2",
        "--ws-bulk-message-size", str(256 * 1024),
        timeout=55,
    )  # fmt: skip
    cells = cells_by_key(data)
    assert set(cells) == {(peer, w) for peer in ("nginx", FASTPIPE) for w in NEW_CELLS}
    assert all(cell["error"] is None for cell in cells.values()), [c["error"] for c in cells.values()]
    for (peer, workload), cell in cells.items():
        assert cell["errors"] == 0 and cell["requests"] > 0 and cell["cost"] > 0, (peer, workload)
        assert cell["generator"] == ("python" if workload.startswith("ws") else "wrk")
    assert "over TLS" in data["meta"]["origin"]
    markdown = (tmp_path / "r.md").read_text()
    assert f"| {FASTPIPE} | " in markdown.split("**TLS upstream and WebSocket cells**")[1]
    if FASTPIPE == "fastpipe":
        assert "| CPU per GiB, TLS upstream <= 1.2x nginx |" in markdown
