"""Fixtures for the proxy tests: a real origin and a proxy in front of it, on 127.0.0.1 only.

Tests run on uvloop; those marked ``both_loops`` run on asyncio's own loop too. The modules named in
``OVER_TLS`` run every test that starts a proxy twice: with a plaintext upstream and with an ``https://``
one (origins served with a certificate from a throwaway CA, which the proxy is told to trust).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fastpipe._origin import start_origin
from fastpipe.http import ExchangeRecord, shutdown_proxy, start_proxy

from ._proxy_support import (
    MakeRecordingOrigin,
    ProxyUnderTest,
    RecordingOrigin,
    StartProxy,
    TlsFiles,
    make_tls_files,
    start_recording_origin,
)

OVER_TLS = frozenset(
    {"test_flow_control", "test_headers", "test_hot_path", "test_keep_alive", "test_records_and_shutdown",
     "test_roundtrip", "test_upstream_faults"}
)  # fmt: skip


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "start" in metafunc.fixturenames and metafunc.module.__name__.rpartition(".")[2] in OVER_TLS:
        metafunc.parametrize("upstream_tls", [False, True], ids=["http", "https"], indirect=True)


@pytest.fixture
def upstream_tls(request: pytest.FixtureRequest) -> bool:
    """Whether this test's origins speak TLS (and its proxies reach them over https://)."""
    return bool(getattr(request, "param", False))


@pytest.fixture
def origin_ssl(upstream_tls: bool, tls_files: TlsFiles) -> ssl.SSLContext | None:
    return tls_files.server_context() if upstream_tls else None


@pytest.fixture
async def origin_port(origin_ssl: ssl.SSLContext | None) -> AsyncIterator[int]:
    server = await start_origin(ssl=origin_ssl)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def start(upstream_tls: bool, tls_files: TlsFiles) -> AsyncIterator[StartProxy]:
    """``await start(upstream_port, **limits)`` → a running proxy; all are shut down after the test."""
    started: list[asyncio.Server] = []
    scheme = "https" if upstream_tls else "http"
    trust: dict[str, Any] = {"upstream_ca": str(tls_files.ca)} if upstream_tls else {}

    async def starter(upstream_port: int, **options: Any) -> ProxyUnderTest:
        records: list[ExchangeRecord] = []
        server = await start_proxy(
            f"{scheme}://127.0.0.1:{upstream_port}", port=0, on_exchange=records.append, **trust, **options
        )
        started.append(server)
        return ProxyUnderTest(server, records)

    yield starter
    for server in started:
        await shutdown_proxy(server, grace=0.5)


@pytest.fixture
async def proxied(origin_port: int, start: StartProxy) -> ProxyUnderTest:
    """A proxy with default limits in front of the built-in origin."""
    return await start(origin_port)


@pytest.fixture
async def recording_origin(origin_ssl: ssl.SSLContext | None) -> AsyncIterator[MakeRecordingOrigin]:
    """``await recording_origin(reply=None)`` → (port, connections); every server and connection is closed after."""
    servers: list[asyncio.Server] = []
    registries: list[list[RecordingOrigin]] = []

    async def make(reply: Any = None) -> tuple[int, list[RecordingOrigin]]:
        server, registry = await start_recording_origin(reply, ssl=origin_ssl)
        servers.append(server)
        registries.append(registry)
        return server.sockets[0].getsockname()[1], registry

    yield make
    # Connections first: since Python 3.12 ``wait_closed()`` waits for every connection of the server,
    # and a proxy torn down after this fixture still holds some in its pool.
    for registry in registries:
        for origin in registry:
            if origin.transport is not None:
                origin.transport.abort()
    for server in servers:
        server.close()
        await server.wait_closed()
    await asyncio.sleep(0)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1, localhost and ::1, made once per run (never committed)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))
