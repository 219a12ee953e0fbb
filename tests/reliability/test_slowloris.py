"""Slowloris: many connections dripping a request head one byte a second are cut by the header timeout,
while normal clients on the same proxy keep being served, exactly and without waiting on them; and its
cousin on the body ("R.U.D.Y."): a request body that stops arriving must not hold its connections forever."""

from __future__ import annotations

import asyncio
import hashlib

from ._client import ClientPlan, run_client
from ._origin import OriginPlan
from .hostile._peers import proxied_origin, raw_exchange

DRIPPERS = 200
HEADER_TIMEOUT = 1.5
HEAD = b"GET /slow HTTP/1.1\r\nHost: slowloris.test\r\nX-Padding: " + b"x" * 100 + b"\r\n\r\n"


async def _drip(port: int, started: asyncio.Event) -> tuple[float, bytes]:
    """Send the head one byte a second; return (seconds until the proxy closed, what it answered)."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await started.wait()
    began = loop.time()
    received = b""
    try:
        for byte in HEAD:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
                chunk = await asyncio.wait_for(reader.read(4096), 1.0)
            except (asyncio.TimeoutError, TimeoutError):
                continue  # nothing yet: the next byte
            except ConnectionError:
                break
            if not chunk:
                break
            received += chunk
            # The answer is in: read to the close.
            while chunk := await asyncio.wait_for(reader.read(4096), 2.0):
                received += chunk
            break
        return loop.time() - began, received
    finally:
        writer.transport.abort()


async def test_slowloris_connections_are_cut_at_the_header_timeout_while_others_are_served() -> None:
    async with proxied_origin(header_timeout=HEADER_TIMEOUT, idle_timeout=5.0) as peers:
        body = bytes(range(256)) * 64
        peers.origin.plans[b"/normal"] = OriginPlan(body=body, framing="chunked", chunk_sizes=(1000,))
        started = asyncio.Event()
        drippers = [asyncio.ensure_future(_drip(peers.port, started)) for _ in range(DRIPPERS)]
        await asyncio.sleep(0.2)  # every dripper connected
        started.set()

        # Normal clients, one after another, for as long as the drippers hold on (and a bit longer).
        loop = asyncio.get_running_loop()
        served = []
        until = loop.time() + HEADER_TIMEOUT + 1.0
        while loop.time() < until:
            began = loop.time()
            outcome = await run_client(peers.port, ClientPlan(target=b"/normal", patience=3.0))
            served.append((loop.time() - began, outcome))
        results = await asyncio.gather(*drippers)

        for seconds, outcome in served:
            response = outcome.response
            assert response is not None and response.status == 200, outcome.received[:200]
            assert hashlib.sha256(response.body).digest() == hashlib.sha256(body).digest()
            assert seconds < 1.0, f"a normal request took {seconds:.2f}s among the slowloris connections"
        assert len(served) >= 10

        # Every dripper was cut by the proxy: after the header timeout (plus at most one sweep interval and
        # scheduling slack), never before, and with a 408 or a bare close — never served.
        for seconds, received in results:
            assert HEADER_TIMEOUT - 0.3 <= seconds <= HEADER_TIMEOUT + 1.0, f"cut after {seconds:.2f}s"
            assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received[:100]
        assert sum(received.startswith(b"HTTP/1.1 408 ") for _, received in results) == DRIPPERS
        assert not [r for r in peers.origin.requests.get(b"/slow", [])], "a dripped head reached the origin"
        await asyncio.sleep(0.1)
        assert not peers.proxy.connections
        assert peers.handler_calls == []


async def test_request_body_that_stops_arriving_is_cut_in_bounded_time() -> None:
    timeouts = {"header_timeout": 0.5, "upstream_timeout": 0.6, "idle_timeout": 1.0}
    async with proxied_origin(**timeouts) as peers:
        head = b"POST /rudy HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        results = await asyncio.gather(
            *(raw_exchange(peers.port, head + b"0123456789", timeout=4.0) for _ in range(20))
        )
        assert all(result.closed for result in results), (
            f"{sum(not result.closed for result in results)} of 20 stalled uploads still open after 4 s "
            f"(every timeout is at most {max(timeouts.values())} s)"
        )
        for result in results:
            assert [response.status for response in result.responses] in ([408], [504], []), result.received[:200]
