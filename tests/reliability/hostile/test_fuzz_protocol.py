"""Fuzz target: random bytes and mutated valid requests into the proxy's server protocol.

Every input runs on a real connection through ``_drive.Driver`` (see there for what must hold). The
normal run tries 300 fixed inputs per strategy; with ``FASTPIPE_FUZZ_EXAMPLES=N`` (``make fuzz``) it explores
N fresh random inputs per strategy.
Hypothesis prints the failing input and a ``@reproduce_failure`` line to replay it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._drive import CORPUS, Driver

EXAMPLES = int(os.environ.get("FASTPIPE_FUZZ_EXAMPLES", "300"))
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    # The normal run tries the same inputs every time; a fuzz run (the variable set) explores new ones.
    derandomize="FASTPIPE_FUZZ_EXAMPLES" not in os.environ,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Pieces that make parsers disagree: line ends, separators, signs, controls, framing headers.
TOKENS = (
    b"\r",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"\x00",
    b" ",
    b"\t",
    b":",
    b";",
    b",",
    b'"',
    b"+",
    b"-",
    b"0",
    b"f" * 17,
    b"9" * 20,
    b"\x7f",
    b"\xff",
    b"HTTP/1.1",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Connection: close\r\n",
    b"Host: x\r\n",
    b"0\r\n\r\n",
    b"GET /inner HTTP/1.1\r\nHost: x\r\n\r\n",  # a request where a body may be (fine if framed as one)
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(("insert", "delete", "replace", "flip", "repeat")))
        if operation == "insert":
            data[position:position] = draw(st.sampled_from(TOKENS) | st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        elif operation == "replace":
            data[position : position + 1] = draw(st.sampled_from(TOKENS))
        elif operation == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "repeat":
            end = min(len(data), position + draw(st.integers(1, 40)))
            data[position:position] = data[position:end]
    return bytes(data)


pieces = st.lists(st.integers(1, 64), min_size=1, max_size=4) | st.just([1 << 20])


@pytest.fixture
def driver_loop() -> Iterator[tuple[asyncio.AbstractEventLoop, Driver]]:
    """One uvloop loop and one proxy for all the examples of a test (hypothesis drives it synchronously)."""
    loop = uvloop.new_event_loop()
    driver = loop.run_until_complete(Driver.start())
    try:
        yield loop, driver
        # After every input: nothing left open or alive on the proxy's side.
        loop.run_until_complete(asyncio.sleep(0.05))
        assert not driver.proxy.connections, driver.proxy.connections
        assert driver.handler_calls == []
    finally:
        loop.run_until_complete(driver.close())
        loop.close()


@FUZZ_SETTINGS
@given(data=mutated_requests(), split=pieces)
def test_mutated_requests_never_crash_hang_or_reach_the_origin_malformed(
    driver_loop: tuple[asyncio.AbstractEventLoop, Driver], data: bytes, split: list[int]
) -> None:
    loop, driver = driver_loop
    loop.run_until_complete(driver.run(data, split))


@FUZZ_SETTINGS
@given(data=st.binary(max_size=600), split=pieces)
def test_random_bytes_never_crash_hang_or_reach_the_origin_malformed(
    driver_loop: tuple[asyncio.AbstractEventLoop, Driver], data: bytes, split: list[int]
) -> None:
    loop, driver = driver_loop
    loop.run_until_complete(driver.run(data, split))


def test_the_driver_catches_a_response_a_strict_client_refuses() -> None:
    """Negative control: the judge rejects a proxy answer that is not strict HTTP/1.1."""
    from ._drive import FuzzFailure

    async def scenario() -> None:
        driver = await Driver.start()
        try:
            with pytest.raises(FuzzFailure):
                driver._judge(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", 0)
            with pytest.raises(FuzzFailure):
                driver._judge(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", 0)
            driver._judge(b"HTTP/1.1 200 OK\r\nServer: chaos-origin\r\nContent-Length: 2\r\n\r\nok", 0)
        finally:
            await driver.close()

    runner_loop = uvloop.new_event_loop()
    try:
        runner_loop.run_until_complete(scenario())
    finally:
        runner_loop.close()
