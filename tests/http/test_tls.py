"""TLS on both sides: what the proxy verifies, sends and says when a handshake with the upstream fails.

The ordinary proxy behaviour over an https:// upstream is covered by the modules conftest.OVER_TLS runs
twice; this module covers what only TLS has. Certificates come from throwaway CAs made at test time.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from fastpipe._origin import start_origin
from fastpipe.http import ExchangeRecord, shutdown_proxy, start_proxy

from ._proxy_support import (
    MakeRecordingOrigin,
    RecordingOrigin,
    TlsFiles,
    parse_responses,
    raw_exchange,
    start_recording_origin,
)

GET = b"GET /bytes?n=5 HTTP/1.1\r\nHost: client.test\r\nConnection: close\r\n\r\n"


async def _through(upstream: str, request: bytes = GET, **options: object) -> tuple[bytes, list[ExchangeRecord]]:
    records: list[ExchangeRecord] = []
    server = await start_proxy(upstream, port=0, on_exchange=records.append, **options)  # type: ignore[arg-type]
    try:
        data = await raw_exchange(server.sockets[0].getsockname()[1], request, timeout=10)
    finally:
        await shutdown_proxy(server, grace=0.5)
    return data, records


def _context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


class _Handshakes:
    """What a TLS origin saw of each handshake: the SNI and the ALPN protocol chosen."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.names: list[str | None] = []
        context.set_alpn_protocols(["h2", "http/1.1"])
        context.sni_callback = lambda sock, name, ctx: self.names.append(name)  # type: ignore[assignment]


@pytest.mark.both_loops
async def test_an_https_upstream_is_verified_and_gets_sni_and_alpn_http11(tls_files: TlsFiles) -> None:
    context = _context(tls_files.authority.issue_cert("origin.test"))
    seen = _Handshakes(context)
    alpn: list[str | None] = []

    def reply(origin: RecordingOrigin, data: bytes) -> None:
        alpn.append(origin.transport.get_extra_info("ssl_object").selected_alpn_protocol())
        origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server, origins = await start_recording_origin(reply, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        # The name to send and verify is not the address connected to: upstream_sni says it.
        data, _ = await _through(
            f"https://127.0.0.1:{port}", upstream_ca=str(tls_files.ca), upstream_sni="origin.test", rewrite_host=True
        )
    finally:
        server.close()
    [response] = parse_responses(data)
    assert (response.status, response.body) == (200, b"ok")
    assert seen.names == ["origin.test"] and alpn == ["http/1.1"]
    assert b"\r\nHost: 127.0.0.1:" + str(port).encode() + b"\r\n" in origins[0].data  # rewrite_host: the upstream's


async def test_an_ip_address_upstream_sends_no_sni_and_is_verified_against_its_ip(tls_files: TlsFiles) -> None:
    context = tls_files.server_context()
    seen = _Handshakes(context)
    server = await start_origin(ssl=context)
    try:
        data, _ = await _through(
            f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", upstream_ca=str(tls_files.ca)
        )
    finally:
        server.close()
    assert [r.status for r in parse_responses(data)] == [200]
    assert seen.names == [None]


def _expired(authority: trustme.CA) -> trustme.LeafCert:
    now = datetime.datetime.now(datetime.timezone.utc)
    return authority.issue_cert(
        "127.0.0.1", not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1)
    )


@pytest.mark.both_loops
@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("unknown CA", "certificate verify failed: unable to get local issuer certificate"),
        ("wrong name", "certificate verify failed: Hostname mismatch"),
        ("expired", "certificate verify failed: certificate has expired"),
        ("plaintext upstream", "TLS handshake failed"),
    ],
)
async def test_a_failed_handshake_is_a_502_that_says_why_and_the_proxy_keeps_serving(
    tls_files: TlsFiles, caplog: pytest.LogCaptureFixture, case: str, why: str
) -> None:
    if case == "unknown CA":
        context: ssl.SSLContext | None = _context(trustme.CA().issue_cert("127.0.0.1"))
    elif case == "wrong name":
        context = _context(tls_files.authority.issue_cert("elsewhere.test"))
    elif case == "expired":
        context = _context(_expired(tls_files.authority))
    else:
        context = None
    server = await start_origin(ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    records: list[ExchangeRecord] = []
    name = {"upstream_sni": "origin.test"} if case == "wrong name" else {}  # a name, so not an IP mismatch
    proxy = await start_proxy(url, port=0, on_exchange=records.append, upstream_ca=str(tls_files.ca), **name)
    port = proxy.sockets[0].getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, logger="fastpipe"):
            answers = [await raw_exchange(port, GET, timeout=10) for _ in range(2)]
    finally:
        await shutdown_proxy(proxy, grace=0.5)
        server.close()
    for answer in answers:
        [response] = parse_responses(answer)
        assert response.status == 502 and why.lower() in response.body.decode().lower()
    assert [(r.status, r.end) for r in records] == [(502, "upstream error")] * 2
    assert all(record.detail and why.lower() in record.detail.lower() for record in records)
    assert any(why.lower() in message.lower() for message in caplog.messages)


@pytest.mark.both_loops
async def test_a_stalled_handshake_is_a_504_within_connect_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts the connection and never answers the ClientHello

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        data, records = await _through(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", connect_timeout=0.5)
    finally:
        for writer in accepted:
            writer.transport.abort()
        server.close()
    assert [r.status for r in parse_responses(data)] == [504]
    assert loop.time() - started < 5
    assert records[0].end == "timeout"


async def test_upstream_insecure_accepts_any_certificate_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    server = await start_origin(ssl=_context(trustme.CA().issue_cert("whatever.test")))
    try:
        with caplog.at_level(logging.WARNING, logger="fastpipe"):
            data, _ = await _through(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", upstream_insecure=True)
    finally:
        server.close()
    assert [r.status for r in parse_responses(data)] == [200]
    assert any("NOT verified" in message for message in caplog.messages)


async def test_mutual_tls_presents_the_client_certificate(tls_files: TlsFiles, tmp_path: Path) -> None:
    context = tls_files.server_context()
    context.verify_mode = ssl.CERT_REQUIRED
    clients = trustme.CA()
    clients.configure_trust(context)
    mine = clients.issue_cert("proxy.client.test")
    mine.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    mine.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    server = await start_origin(ssl=context)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        without, _ = await _through(url, upstream_ca=str(tls_files.ca))
        data, _ = await _through(
            url,
            upstream_ca=str(tls_files.ca),
            upstream_cert=str(tmp_path / "client.pem"),
            upstream_key=str(tmp_path / "client.key"),
        )
    finally:
        server.close()
    assert [r.status for r in parse_responses(without)] == [502]
    assert [r.status for r in parse_responses(data)] == [200]


async def test_a_ready_context_can_be_given_instead(tls_files: TlsFiles) -> None:
    server = await start_origin(ssl=tls_files.server_context())
    try:
        data, _ = await _through(
            f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}", upstream_ssl=tls_files.client_context()
        )
    finally:
        server.close()
    assert [r.status for r in parse_responses(data)] == [200]


@pytest.mark.parametrize(
    ("upstream", "options", "error"),
    [
        ("http://127.0.0.1:9", {"upstream_ca": "ca.pem"}, "need an https:// upstream"),
        ("http://127.0.0.1:9", {"upstream_insecure": True}, "need an https:// upstream"),
        ("https://127.0.0.1:9", {"upstream_insecure": True, "upstream_ca": "x"}, "give one of them"),
        ("https://127.0.0.1:9", {"upstream_key": "k.pem"}, "needs upstream_cert"),
        ("https://127.0.0.1:9", {"upstream_ssl": ssl.create_default_context(), "upstream_ca": "x"}, "not both"),
        ("http://127.0.0.1:9", {"keyfile": "k.pem"}, "needs certfile"),
    ],
)
async def test_tls_options_that_do_not_fit_are_refused(upstream: str, options: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        await start_proxy(upstream, port=0, **options)  # type: ignore[arg-type]


async def test_a_missing_ca_file_is_refused_at_start() -> None:
    with pytest.raises(FileNotFoundError):
        await start_proxy("https://127.0.0.1:9", port=0, upstream_ca="/nonexistent/ca.pem")


@pytest.mark.both_loops
async def test_a_tls_listener_serves_https_and_says_so_upstream(
    tls_files: TlsFiles, recording_origin: MakeRecordingOrigin
) -> None:
    port, origins = await recording_origin()
    proxy = await start_proxy(
        f"http://127.0.0.1:{port}", port=0, certfile=str(tls_files.cert), keyfile=str(tls_files.key)
    )
    proxy_port = proxy.sockets[0].getsockname()[1]
    try:
        # A client speaking plaintext to the TLS port is dropped without harm to anyone else.
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b"HTTP/1.1 200" not in await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        async with httpx.AsyncClient(verify=tls_files.client_context()) as client:
            response = await client.get(f"https://127.0.0.1:{proxy_port}/over-tls")
    finally:
        await shutdown_proxy(proxy, grace=0.5)
    assert response.status_code == 200 and response.content == b"ok"
    head = origins[-1].data.split(b"\r\n\r\n")[0]
    assert b"\r\nX-Forwarded-Proto: https" in head and head.startswith(b"GET /over-tls HTTP/1.1")


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_the_cli_serves_tls_on_both_sides(tls_files: TlsFiles, workers: str) -> None:
    origin = await start_origin(ssl=tls_files.server_context())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        *(sys.executable, "-m", "fastpipe", "proxy", "--listen", f"127.0.0.1:{port}", "--workers", workers),
        *("--upstream", f"https://127.0.0.1:{origin.sockets[0].getsockname()[1]}", "--upstream-ca", str(tls_files.ca)),
        *("--certfile", str(tls_files.cert), "--keyfile", str(tls_files.key), "--shutdown-grace", "1"),
    ]
    process = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.DEVNULL)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        async with httpx.AsyncClient(verify=tls_files.client_context()) as client:
            while True:
                try:
                    response = await client.get(f"https://127.0.0.1:{port}/bytes?n=1000")
                    break
                except httpx.ConnectError:
                    assert loop.time() < deadline, "the proxy did not start serving"
                    await asyncio.sleep(0.2)
            answers = [await client.get(f"https://127.0.0.1:{port}/bytes?n={n}") for n in (0, 70_000, 5)]
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)
        origin.close()
    assert response.status_code == 200 and len(response.content) == 1000
    assert [len(answer.content) for answer in answers] == [0, 70_000, 5]


class _RecordPeer:
    """One end of a TLS connection that decrypts what it receives one record at a time, so a test sees which
    plaintext each TLS record carried. ``records`` holds, per record after the handshake, its plaintext
    (b"" for one that carried none, such as a session ticket)."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool) -> None:
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        name = None if server_side else "127.0.0.1"
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side, server_hostname=name)
        self._raw = b""
        self.handshaken = False
        self.records: list[bytes] = []

    def handshake(self) -> bytes:
        """Step the handshake; returns the bytes to send."""
        try:
            self._tls.do_handshake()
            self.handshaken = True
        except ssl.SSLWantReadError:
            pass
        return self._outgoing.read()

    def received(self, data: bytes) -> bytes:
        """Take raw bytes off the wire; returns the bytes to send back."""
        self._raw += data
        reply = b""
        while len(self._raw) >= 5 and len(self._raw) >= 5 + int.from_bytes(self._raw[3:5], "big"):
            size = 5 + int.from_bytes(self._raw[3:5], "big")  # a record: type, version, length, payload
            self._incoming.write(self._raw[:size])
            self._raw = self._raw[size:]
            if not self.handshaken:
                reply += self.handshake()
                continue
            try:
                self.records.append(self._tls.read(1 << 17))
            except ssl.SSLWantReadError:
                self.records.append(b"")
            reply += self._outgoing.read()
        return reply

    def send(self, plaintext: bytes) -> bytes:
        self._tls.write(plaintext)
        return self._outgoing.read()


class _RecordOrigin(asyncio.Protocol):
    """A keep-alive TLS origin that answers each request (head and Content-Length body) once it has all of it."""

    def __init__(self, context: ssl.SSLContext, peers: list[_RecordPeer]) -> None:
        self.peer = _RecordPeer(context, server_side=True)
        self.answered = 0  # bytes of plaintext answered so far
        peers.append(self.peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.peer.received(data))
        request = b"".join(self.peer.records)[self.answered :]
        head, ended, body = request.partition(b"\r\n\r\n")
        length = int(head.lower().partition(b"content-length: ")[2].split(b"\r\n")[0] or 0)
        if ended and len(body) >= length:
            self.answered += len(head) + 4 + length
            self.transport.write(self.peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))


async def test_a_small_request_body_goes_upstream_in_the_tls_record_of_its_head(tls_files: TlsFiles) -> None:
    # One record for head and body, not one each: half the encryptions here and decryptions upstream. The
    # first request waits for the connection to be made; the second finds it in the pool.
    peers: list[_RecordPeer] = []
    loop = asyncio.get_running_loop()
    origin = await loop.create_server(lambda: _RecordOrigin(tls_files.server_context(), peers), "127.0.0.1", 0)
    port = origin.sockets[0].getsockname()[1]
    proxy = await start_proxy(f"https://127.0.0.1:{port}", port=0, upstream_ca=str(tls_files.ca))
    body = b'{"model": "m", "stream": true}'
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
    try:
        answers = [
            await raw_exchange(proxy.sockets[0].getsockname()[1], request % len(body) + body, timeout=10)
            for _ in range(2)
        ]
    finally:
        await shutdown_proxy(proxy, grace=0.5)
        origin.close()
    assert [parse_responses(answer)[0].body for answer in answers] == [b"ok", b"ok"]
    [peer] = peers
    carried = [record for record in peer.records if record]
    assert len(carried) == 2
    for record in carried:
        assert record.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and record.endswith(b"\r\n\r\n" + body)


async def test_a_small_response_reaches_a_tls_client_in_the_record_of_its_head(tls_files: TlsFiles) -> None:
    def reply(origin: RecordingOrigin, data: bytes) -> None:
        origin.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    upstream, _ = await start_recording_origin(reply)
    proxy = await start_proxy(
        f"http://127.0.0.1:{upstream.sockets[0].getsockname()[1]}",
        port=0,
        certfile=str(tls_files.cert),
        keyfile=str(tls_files.key),
    )
    peer = _RecordPeer(tls_files.client_context(), server_side=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
    try:
        writer.write(peer.handshake())
        sent = False
        for _ in range(100):  # handshake flights, tickets, the response: a few reads
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the proxy closed before answering"
            writer.write(peer.received(data))
            if peer.handshaken and not sent:
                writer.write(peer.send(b"GET /small HTTP/1.1\r\nHost: client.test\r\n\r\n"))
                sent = True
            if b"hello" in b"".join(peer.records):
                break
    finally:
        writer.close()
        await shutdown_proxy(proxy, grace=0.5)
        upstream.close()
    [carried] = [record for record in peer.records if record]
    assert carried.startswith(b"HTTP/1.1 200 OK\r\n") and carried.endswith(b"\r\n\r\nhello")
