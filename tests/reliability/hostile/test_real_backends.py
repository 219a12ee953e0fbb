"""Differential tests against real back ends: what each server parses from the bytes the proxy sends.

Five servers that keep connections alive (gunicorn with threads, waitress, uvicorn with h11 and with
httptools, hypercorn) run the app of ``_backend_apps``, which logs every request as the server parsed
it. The proxy runs with its pool on, so a request that leaves bytes behind on an upstream connection
would be completed by the next client's request: the smuggling cases send an attacker's request, then a
victim's on another connection, and check what the back end saw. Four of them (not waitress) also serve
over TLS, where the proxy joins a request head and its body's first piece into one TLS record.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastpipe.http import shutdown_proxy, start_proxy

from ...http._proxy_support import TlsFiles
from ._peers import raw_exchange

HERE = Path(__file__).parent
ASGI = "_backend_apps:asgi_app"
WSGI = "_backend_apps:wsgi_app"
SERVERS: dict[str, list[str]] = {
    "gunicorn-gthread": [*"gunicorn -k gthread --threads 4 -w 1 --keep-alive 30 -b {addr}".split(), WSGI],
    "waitress": [*"waitress --listen={addr} --no-clear-untrusted-proxy-headers".split(), WSGI],
    "uvicorn-h11": [*"uvicorn --http h11 --host 127.0.0.1 --port {port} --log-level warning".split(), ASGI],
    "uvicorn-httptools": [*"uvicorn --http httptools --host 127.0.0.1 --port {port} --log-level warning".split(), ASGI],
    "hypercorn": [*"hypercorn -b {addr} --keep-alive 30".split(), ASGI],
}
# The flags that serve each (but waitress) over TLS, with the certificate {cert} and key {key}
TLS_FLAGS: dict[str, str] = {
    "gunicorn-gthread": "--certfile {cert} --keyfile {key}",
    "uvicorn-h11": "--ssl-certfile {cert} --ssl-keyfile {key}",
    "uvicorn-httptools": "--ssl-certfile {cert} --ssl-keyfile {key}",
    "hypercorn": "--certfile {cert} --keyfile {key}",
}
START_SECONDS = 20.0


class Backend:
    """One real server in a subprocess, with the log of the requests its app saw."""

    def __init__(self, name: str, argv: list[str], log: Path, tls: TlsFiles | None = None) -> None:
        self.name = name
        self.log = log
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        if tls is not None:  # the app stays the last word
            argv = [*argv[:-1], *TLS_FLAGS[name].split(), argv[-1]]
        cert, key = (tls.cert, tls.key) if tls is not None else ("", "")
        words = [word.format(addr=f"127.0.0.1:{self.port}", port=self.port, cert=cert, key=key) for word in argv]
        env = {**os.environ, "FASTPIPE_BACKEND_LOG": str(log)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", *words], cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{self.port}"

    def wait_serving(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen within {START_SECONDS} s")

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def clear(self) -> None:
        self.log.write_text("")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()


@contextlib.contextmanager
def _serving(started: dict[str, Backend]) -> Iterator[dict[str, Backend]]:
    try:
        for backend in started.values():
            backend.wait_serving()
        yield started
    finally:
        for backend in started.values():
            backend.stop()


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Backend]]:
    logs = tmp_path_factory.mktemp("backend-logs")
    with _serving({name: Backend(name, argv, logs / f"{name}.jsonl") for name, argv in SERVERS.items()}) as started:
        yield started


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return TlsFiles(tmp_path_factory.mktemp("backend-tls"))


@pytest.fixture(scope="module")
def tls_backends(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[dict[str, Backend]]:
    logs = tmp_path_factory.mktemp("tls-backend-logs")
    chosen = {name: Backend(name, SERVERS[name], logs / f"{name}.jsonl", tls_files) for name in TLS_FLAGS}
    with _serving(chosen) as started:
        yield started


@pytest.fixture(params=sorted(SERVERS))
def backend(request: pytest.FixtureRequest, backends: dict[str, Backend]) -> Backend:
    chosen = backends[request.param]
    chosen.clear()
    return chosen


@contextlib.asynccontextmanager
async def proxy_to(backend: Backend, **options: Any) -> AsyncIterator[int]:
    server = await start_proxy(backend.url, port=0, **options)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await shutdown_proxy(server, grace=0.5)


async def get(port: int, target: bytes, extra: bytes = b"") -> bytes:
    """A keep-alive GET on a fresh connection; the response body (a JSON echo)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: backend.test\r\n" + extra + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


VICTIM = b"Authorization: Bearer victim-secret\r\nCookie: session=victim\r\n"


@pytest.mark.both_loops
@pytest.mark.parametrize(
    "connection",
    [b"keep-alive, Content-Length", b"close, Content-Length", b"Content-Length"],
    ids=["keep-alive", "close", "alone"],
)
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
async def test_connection_cannot_strip_the_request_length(backend: Backend, connection: bytes, version: bytes) -> None:
    # The smuggled part is a half request: on a pooled upstream connection, the next client's request
    # would complete it and carry the victim's credentials to the attacker's target.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: backend.test\r\nX-Swallow: "
    attack = (
        b"POST /attack HTTP/" + version + b"\r\nHost: backend.test\r\nConnection: " + connection + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled
    )
    async with proxy_to(backend) as port:
        result = await raw_exchange(port, attack)
        assert [response.status for response in result.responses] == [400] and result.closed
        echo = json.loads(await get(port, b"/victim", VICTIM))
    assert echo["path"] == "/victim"
    seen = backend.entries()
    assert [entry["path"] for entry in seen] == ["/victim"], f"{backend.name} parsed {seen}"


@pytest.mark.parametrize("split", [(), (9,), (9, 30), (-40,)], ids=["one-read", "head+9", "three-reads", "head-split"])
async def test_a_plain_upload_reaches_the_back_end_whole_and_alone(backend: Backend, split: tuple[int, ...]) -> None:
    """A plain request's body is counted without llhttp (in the compiled build): a body that looks like the
    start of a request, in the head's read or split over later ones (or a head split itself, for llhttp), and
    the request pipelined after it reach the back end as that body and that request, and nothing is left on
    the pooled connection for the next client."""
    await _upload_whole_and_alone(backend, split)


@pytest.mark.parametrize("split", [(), (9,), (9, 30), (-40,)], ids=["one-read", "head+9", "three-reads", "head-split"])
@pytest.mark.parametrize("name", sorted(TLS_FLAGS))
async def test_a_plain_upload_reaches_a_tls_back_end_whole_and_alone(
    tls_backends: dict[str, Backend], tls_files: TlsFiles, name: str, split: tuple[int, ...]
) -> None:
    """The same over TLS, where the request head waits for its body's first piece to share its record: held
    while the body is in the same read, written alone at the end of the loop turn when the body comes later."""
    backend = tls_backends[name]
    backend.clear()
    await _upload_whole_and_alone(backend, split, upstream_ca=str(tls_files.ca))


@pytest.mark.parametrize("name", sorted(TLS_FLAGS))
async def test_a_head_that_waits_for_100_continue_reaches_a_tls_back_end(
    tls_backends: dict[str, Backend], tls_files: TlsFiles, name: str
) -> None:
    """A head held for its body's first piece is written alone at the end of the loop turn: a client that
    sends its body only after the back end's 100 Continue gets that 100, then its answer."""
    backend = tls_backends[name]
    backend.clear()
    body = b"sent after the interim answer"
    head = b"POST /upload HTTP/1.1\r\nHost: backend.test\r\nExpect: 100-continue\r\nContent-Length: %d\r\n"
    head = head % len(body) + b"Connection: close\r\n\r\n"
    async with proxy_to(backend, upstream_ca=str(tls_files.ca)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head)
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(body)
            rest = await asyncio.wait_for(reader.read(-1), 10)
        finally:
            writer.close()
    assert interim.startswith(b"HTTP/1.1 100 "), interim
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:200]
    assert [(entry["method"], entry["path"], entry["body"]) for entry in backend.entries()] == [
        ("POST", "/upload", len(body))
    ]


async def _upload_whole_and_alone(backend: Backend, split: tuple[int, ...], **options: Any) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: backend.test\r\nX-Swallow: "
    head = b"POST /upload HTTP/1.1\r\nHost: backend.test\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
    head %= len(smuggled)
    data = head + smuggled + b"GET /next HTTP/1.1\r\nHost: backend.test\r\nConnection: close\r\n\r\n"
    cuts = [0, *(len(head) + offset for offset in split), len(data)]  # offsets into the body (or the head)
    pieces = [data[start:stop] for start, stop in itertools.pairwise(cuts)]
    async with proxy_to(backend, **options) as port:
        result = await raw_exchange(port, pieces, pause=0.02)
        assert [response.status for response in result.responses] == [200, 200]
        echo = json.loads(await get(port, b"/victim", VICTIM))
    assert echo["path"] == "/victim"
    seen = [(entry["method"], entry["path"], entry["body"]) for entry in backend.entries()]
    assert seen == [("POST", "/upload", len(smuggled)), ("GET", "/next", 0), ("GET", "/victim", 0)], backend.name


async def test_connection_cannot_remove_host_or_the_forwarding_headers(backend: Backend) -> None:
    async with proxy_to(backend) as port:
        for name in (b"Host", b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host", b"Transfer-Encoding"):
            result = await raw_exchange(
                port, b"GET /named HTTP/1.1\r\nHost: backend.test\r\nConnection: " + name + b"\r\n\r\n"
            )
            assert [response.status for response in result.responses] == [400], name
        echo = json.loads(await get(port, b"/after"))
    assert echo["path"] == "/after"
    assert [entry["path"] for entry in backend.entries()] == ["/after"]


def _header(entry: dict[str, Any], *names: str) -> list[str]:
    return [value for name, value in entry["headers"] if name.lower() in names]


@pytest.mark.parametrize("spell", [bytes.upper, bytes.lower, bytes.swapcase], ids=["upper", "lower", "swapped"])
async def test_no_spelling_of_a_name_lets_the_client_set_the_proxy_headers_or_strip_framing(
    backend: Backend, spell: Any
) -> None:
    """The proxy knows the usual spellings of the names it acts on by a table and every other by lower-casing;
    what the back end parses is the same for both."""
    spoof = b"".join(
        spell(name) + b": " + value + b"\r\n"
        for name, value in (
            (b"X-Forwarded-Proto", b"https"),
            (b"X-Forwarded-Host", b"evil.test"),
            (b"X-Forwarded-For", b"6.6.6.6"),
            (b"Keep-Alive", b"timeout=1"),
        )
    )
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: backend.test\r\nX-Swallow: "
    attack = (
        b"POST /attack HTTP/1.1\r\nHost: backend.test\r\n"
        + spell(b"Connection")
        + b": "
        + spell(b"Content-Length")
        + b"\r\n"
        + spell(b"Content-Length")
        + b": %d\r\n\r\n" % len(smuggled)
        + smuggled
    )
    async with proxy_to(backend) as port:
        entry = json.loads(await get(port, b"/spelled", spoof))
        result = await raw_exchange(port, attack)
        assert [response.status for response in result.responses] == [400] and result.closed
        refused = await raw_exchange(
            port, b"GET /h HTTP/1.1\r\nHost: a.test\r\n" + spell(b"Host") + b": b.test\r\n\r\n"
        )
        assert [response.status for response in refused.responses] == [400]
        echo = json.loads(await get(port, b"/victim", VICTIM))
    assert echo["path"] == "/victim"
    assert _header(entry, "http_x_forwarded_proto", "x-forwarded-proto") == ["http"]
    assert _header(entry, "http_x_forwarded_host", "x-forwarded-host") == ["backend.test"]
    assert _header(entry, "http_x_forwarded_for", "x-forwarded-for") == ["6.6.6.6, 127.0.0.1"]
    assert _header(entry, "http_keep_alive", "keep-alive") == [], "hop-by-hop in any spelling stays on its hop"
    assert [e["path"] for e in backend.entries()] == ["/spelled", "/victim"], (
        f"{backend.name} parsed {backend.entries()}"
    )


async def test_underscore_spellings_cannot_pose_as_the_forwarding_headers(backend: Backend) -> None:
    spoof = b"X_Forwarded_Proto: https\r\nX_Forwarded_Host: evil.test\r\nX_Forwarded_For: 6.6.6.6\r\nX_Custom: 1\r\n"
    async with proxy_to(backend) as port:
        [entry] = [json.loads(await get(port, b"/u", spoof))]
    # WSGI folds "_" and "-" together (HTTP_X_FORWARDED_PROTO); ASGI servers keep the names as sent.
    assert _header(entry, "http_x_forwarded_proto", "x-forwarded-proto") == ["http"]
    assert _header(entry, "http_x_forwarded_host", "x-forwarded-host") == ["backend.test"]
    assert _header(entry, "http_x_forwarded_for", "x-forwarded-for") == ["127.0.0.1"]
    assert not [name for name, _ in entry["headers"] if "_" in name and not name.startswith("HTTP_")]
    assert _header(entry, "http_x_custom") == [], "underscored names are dropped by default"


async def test_underscores_in_headers_keeps_names_that_fold_onto_no_header_the_proxy_sets(backend: Backend) -> None:
    async with proxy_to(backend, underscores_in_headers=True) as port:
        entry = json.loads(await get(port, b"/u", b"X_Forwarded_Proto: https\r\nX_Custom: 1\r\n"))
    assert _header(entry, "http_x_forwarded_proto", "x-forwarded-proto") == ["http"]
    # gunicorn and waitress drop underscored names themselves; the ASGI servers pass them to the app.
    wsgi = backend.name in ("gunicorn-gthread", "waitress")
    assert _header(entry, "http_x_custom", "x_custom") == ([] if wsgi else ["1"])


@pytest.mark.both_loops
async def test_an_early_answer_to_a_large_upload_reaches_the_client(backends: dict[str, Backend]) -> None:
    """gunicorn answers /status/413 without reading the 3 MB body and closes; the client must get the 413."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    backend = backends["gunicorn-gthread"]
    body = HERE.parent / "upload-3mb.bin"
    body.write_bytes(b"\0" * 3_000_000)
    try:
        async with proxy_to(backend) as port:
            codes = []
            for _ in range(20):
                process = await asyncio.create_subprocess_exec(
                    curl, "-sS", "-H", "Expect:", "--data-binary", f"@{body}", "-o", "/dev/null",
                    "-w", "%{http_code}", f"http://127.0.0.1:{port}/status/413",
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                )  # fmt: skip
                out, _ = await asyncio.wait_for(process.communicate(), 30)
                codes.append(out.decode())
    finally:
        body.unlink()
    assert codes == ["413"] * 20, f"answers lost: {codes}"
