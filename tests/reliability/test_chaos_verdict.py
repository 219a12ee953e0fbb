"""The chaos verdict can fail: a plain byte relay in front of the same origin breaks the invariants.

A relay that copies bytes both ways and closes one side when the other closes is what a careless proxy
amounts to: an upstream reset before the head leaves the client with nothing instead of a 502, a stall
is never answered with a 504, and a reset in a close-delimited body becomes a clean close, a short body
that looks complete. The same schedule that passes through fastpipe's proxy must flag all of these.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ._chaos import scenario_for
from ._harness import live_objects, run_chaos
from ._origin import FIN_MID_BODY, RST_BEFORE_HEAD, RST_MID_BODY, STALL_BEFORE_HEAD


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()  # whatever ended the source, the other side sees a plain close


async def start_byte_relay(upstream: str, **_limits: Any) -> asyncio.Server:
    host, port = upstream.removeprefix("http://").split(":")

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            origin_reader, origin_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, origin_writer), _pump(origin_reader, client_writer))

    return await asyncio.start_server(relay, "127.0.0.1", 0)


def _seeds_with(fault: str, framing: str | None = None, count: int = 3) -> list[int]:
    """The first seeds whose scenario has this origin fault and a well-behaved client."""
    found: list[int] = []
    seed = 0
    while len(found) < count:
        scenario = scenario_for(seed)
        plan = scenario.origin
        if (
            plan.fault == fault
            and scenario.client.fault == "none"
            and scenario.client.method != b"HEAD"
            and (framing is None or plan.framing == framing)
        ):
            found.append(seed)
        seed += 1
    return found


async def test_a_plain_byte_relay_is_caught_by_the_verdict() -> None:
    hidden_reset = _seeds_with(RST_MID_BODY, framing="close")
    no_502 = _seeds_with(RST_BEFORE_HEAD)
    no_504 = _seeds_with(STALL_BEFORE_HEAD, count=1)
    benign_cut = _seeds_with(FIN_MID_BODY, framing="close", count=1)  # a close *is* that body's end
    report = await run_chaos([*hidden_reset, *no_502, *no_504, *benign_cut], start=start_byte_relay)
    explained = report.explain(__file__)
    for seed in hidden_reset:
        # Not every reset loses bytes on the way, but every one that does must read as wrong.
        assert all("wrong" in problem for problem in report.problems.get(seed, [])), explained
    assert any("complete but wrong" in p for seed in hidden_reset for p in report.problems.get(seed, [])), explained
    for seed in no_502:
        assert any("502" in problem for problem in report.problems[seed]), explained
    for seed in no_504:  # the relay waits out the stall and passes the late response on
        assert any("allow none" in problem for problem in report.problems[seed]), explained
    for seed in benign_cut:
        assert seed not in report.problems, explained


async def test_live_objects_counts_a_pipe_left_open() -> None:
    from fastpipe import Pipe

    before = live_objects()["pipes"]
    kept = Pipe.pushed(object())
    assert live_objects()["pipes"] == before + 1
    kept.cancel()
    del kept
    assert live_objects()["pipes"] == before
