"""Usage routes end to end: the real ``openai`` SDK (and httpx for the Anthropic API) through the gateway to a
fake provider on 127.0.0.1, streamed and as JSON, read whole or left before the first token, mid-stream and
after the usage event.

What a route with ``usage = "openai"|"anthropic"`` promises: the usage the provider reports reaches
``record.usage``, the access log and the metrics; a client that leaves early does not erase it, because the
route reads the upstream on (``drained``), within ``usage_drain_bytes`` (default 1 MiB) and
``usage_drain_seconds`` (default 30), so a stream that goes on holds its upstream connection no longer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest

from fastpipe import DisconnectPolicy
from fastpipe.gateway import ConfigError, config_from_dict
from fastpipe.gateway.metrics import GatewayMetrics
from fastpipe.http import ExchangeRecord
from fastpipe.usage import Usage

from ._gateway_support import Gateway, gateway, group
from ._llm_origin import LLMOrigin, completion_text, llm_origin, prompt_tokens

MESSAGES = [{"role": "user", "content": "count to four please"}]
PROMPT = prompt_tokens(MESSAGES)  # 4
MODEL = "gpt-test"


def usage_config(origin: LLMOrigin, usage: str | None = "openai", **route: Any) -> dict[str, Any]:
    """One route ``chat`` for /v1/ to the origin, capturing ``usage`` (None: an ordinary route)."""
    settings: dict[str, Any] = {"name": "chat", "path_prefix": "/v1/", "upstream": "llm", **route}
    if usage is not None:
        settings["usage"] = usage
    return {"upstreams": {"llm": group(origin.url)}, "routes": [settings]}


@asynccontextmanager
async def sdk_for(proxy: Gateway) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0, timeout=10.0)
    try:
        yield client
    finally:
        await client.close()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.01)


def pool_of(proxy: Gateway) -> Any:
    pool = proxy.proxy.routing.links[0].pool
    assert pool is not None
    return pool


async def no_connection_held(proxy: Gateway) -> None:
    """The upstream connection of a cut drain is closed: the pool holds nothing open."""
    pool = pool_of(proxy)
    await eventually(lambda: pool.open == 0, f"the pool still has {pool.open} open connection(s)")


async def stream_chat(client: openai.AsyncOpenAI, max_tokens: int = 4) -> Any:
    return await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )


# Where the client leaves a stream: the number of chunks it reads first, or "usage": up to the usage chunk.
LEAVE_POINTS = {"before the first token": 0, "mid-stream": 3, "after the usage event": "usage"}


async def read_then_leave(client: openai.AsyncOpenAI, leave: int | str, max_tokens: int) -> list[Any]:
    """Stream a chat completion, read ``leave`` chunks (or up to the usage chunk), then close the stream."""
    stream = await stream_chat(client, max_tokens)
    chunks: list[Any] = []
    try:
        if leave != 0:
            async for chunk in stream:
                chunks.append(chunk)
                if leave == "usage" and chunk.usage is not None:
                    break
                if leave == len(chunks):
                    break
    finally:
        await stream.close()
    return chunks


# -- OpenAI, read whole


async def test_openai_json_response_reports_its_usage() -> None:
    async with llm_origin() as origin, gateway(usage_config(origin)) as proxy, sdk_for(proxy) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
        [record] = await proxy.wait_records(1)
    assert completion.choices[0].message.content == completion_text(6)
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT, 6)
    assert (record.status, record.end, record.route) == (200, "complete", "chat")
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=6, model=MODEL, complete=True)


async def test_openai_stream_read_whole_reports_its_usage() -> None:
    async with llm_origin(delay=0.01) as origin, gateway(usage_config(origin)) as proxy, sdk_for(proxy) as client:
        stream = await stream_chat(client, max_tokens=5)
        chunks = [chunk async for chunk in stream]
        [record] = await proxy.wait_records(1)
    text = "".join(choice.delta.content or "" for chunk in chunks for choice in chunk.choices)
    assert text == completion_text(5)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert (record.status, record.end) == (200, "complete")
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=5, model=MODEL, complete=True)


async def test_openai_stream_without_include_usage_reports_none_but_completes() -> None:
    async with llm_origin() as origin, gateway(usage_config(origin)) as proxy, sdk_for(proxy) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, stream=True)
        chunks = [chunk async for chunk in stream]
        [record] = await proxy.wait_records(1)
    assert all(chunk.usage is None for chunk in chunks)
    assert record.end == "complete"
    assert record.usage == Usage(input_tokens=None, output_tokens=None, model=MODEL, complete=True)


# -- OpenAI, the client leaves early: the route reads on and the usage is still seen


@pytest.mark.parametrize("abort_on_eof", [False, True], ids=["FIN is a half-close", "abort_on_client_eof"])
@pytest.mark.parametrize("leave", list(LEAVE_POINTS.values()), ids=list(LEAVE_POINTS))
async def test_openai_stream_left_early_is_drained_and_still_reports_its_usage(
    leave: int | str, abort_on_eof: bool
) -> None:
    # The head comes at once; the first token after 0.3 s, then one event every 0.05 s: the client
    # leaves before the first token, after three chunks, or right after the usage chunk, before [DONE].
    options = {"abort_on_client_eof": True} if abort_on_eof else {}
    async with llm_origin(first_delay=0.3, delay=0.05) as origin:
        async with gateway(usage_config(origin), **options) as proxy, sdk_for(proxy) as client:
            chunks = await read_then_leave(client, leave, max_tokens=8)
            [record] = await proxy.wait_records(1)
        [written] = await origin.wait_over(1)
    if leave == "usage":
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    else:
        assert len(chunks) == leave
    assert written.finished and not written.broken, "the gateway read the origin's stream to its end"
    assert record.status == 200
    if leave == "usage" and not abort_on_eof:
        # The client's FIN reads as a half-close (Limits.abort_on_client_eof): the proxy learns that the
        # client left only when a write fails, and after the usage chunk only [DONE] and the last chunk are
        # left to write. Both may reach the client's transport first: then the exchange counts as complete.
        assert record.end in ("complete", "drained")
    else:
        assert record.end == "drained"
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=8, model=MODEL, complete=True)
    assert record.duration < 5.0


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "json"])
async def test_left_before_the_response_head_still_reports_the_usage(streamed: bool) -> None:
    # The client gives up (its own timeout) while the provider still thinks, before any response head.
    # Its FIN is a half-close: the proxy waits for the response, and finds the client gone at the first write.
    async with llm_origin(head_delay=0.4, delay=0.02) as origin, gateway(usage_config(origin)) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0, timeout=0.15)
        try:
            with pytest.raises(openai.APITimeoutError):
                if streamed:
                    await stream_chat(client, max_tokens=4)
                else:
                    await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        finally:
            await client.close()
        [record] = await proxy.wait_records(1)
        [written] = await origin.wait_over(1)
    assert written.finished
    assert record.end in ("drained", "complete")  # a JSON body may fit in the transport whole
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=4, model=MODEL, complete=True)


# -- abort_on_client_eof: the client's FIN is the client gone, and the drain starts at once


async def leave_and_expect_the_connection_gone_at_once(proxy: Gateway, origin: LLMOrigin) -> ExchangeRecord:
    """Leave a stream before its first token (due in 0.6 s): with abort_on_client_eof the client's FIN ends
    the connection at once (not at the next write) and the drain starts; the usage is still complete."""
    async with sdk_for(proxy) as client:
        await read_then_leave(client, 0, max_tokens=2)
        await eventually(lambda: not proxy.proxy.connections, "the client connection ended at its FIN", 0.3)
        [record] = await proxy.wait_records(1)
    await origin.wait_over(1)
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=2, model=MODEL, complete=True)
    return record


async def test_abort_on_client_eof_given_to_start_proxy_ends_the_connection_at_the_fin() -> None:
    async with llm_origin(first_delay=0.6, delay=0.01) as origin:
        async with gateway(usage_config(origin), abort_on_client_eof=True) as proxy:
            record = await leave_and_expect_the_connection_gone_at_once(proxy, origin)
    assert record.end == "drained"


# Found while writing these tests, and fixed.


async def test_route_abort_on_client_eof_ends_the_connection_at_the_fin() -> None:
    async with llm_origin(first_delay=0.6, delay=0.01) as origin:
        async with gateway(usage_config(origin, limits={"abort_on_client_eof": True})) as proxy:
            record = await leave_and_expect_the_connection_gone_at_once(proxy, origin)
    assert record.end == "drained"


async def test_file_limits_abort_on_client_eof_ends_the_connection_at_the_fin() -> None:
    async with llm_origin(first_delay=0.6, delay=0.01) as origin:
        async with gateway({**usage_config(origin), "limits": {"abort_on_client_eof": True}}) as proxy:
            record = await leave_and_expect_the_connection_gone_at_once(proxy, origin)
    assert record.end == "drained"


async def test_abort_on_client_eof_before_the_response_head_still_reports_the_usage() -> None:
    async with llm_origin(head_delay=0.4, delay=0.02) as origin:
        async with gateway(usage_config(origin), abort_on_client_eof=True) as proxy:
            client = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0, timeout=0.15)
            try:
                with pytest.raises(openai.APITimeoutError):
                    await stream_chat(client, max_tokens=4)
            finally:
                await client.close()
            [record] = await proxy.wait_records(1)
            await origin.wait_over(1)
            pool = pool_of(proxy)  # read to its end: the connection is pooled, not held
            await eventually(lambda: pool.open == pool.idle, "no upstream connection held")
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=4, model=MODEL, complete=True)


async def test_a_drained_stream_gives_its_upstream_connection_back_for_the_next_request() -> None:
    async with llm_origin(first_delay=0.2, delay=0.02) as origin, gateway(usage_config(origin)) as proxy:
        async with sdk_for(proxy) as client:
            await read_then_leave(client, 0, max_tokens=4)
            [record] = await proxy.wait_records(1)
            assert record.end == "drained"
            pool = pool_of(proxy)
            await eventually(lambda: pool.idle == 1, "the drained connection is pooled")
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
            await proxy.wait_records(2)
        first, second = await origin.wait_over(2)
    assert first.peer_port == second.peer_port, "the second request went on the drained connection"
    assert proxy.records[1].end == "complete"


async def test_an_ordinary_route_cancels_the_upstream_when_the_client_leaves() -> None:
    # The contrast: no usage capture, no drain. The upstream is let go at once.
    async with llm_origin(first_delay=0.2, delay=0.05) as origin, gateway(usage_config(origin, usage=None)) as proxy:
        async with sdk_for(proxy) as client:
            await read_then_leave(client, 0, max_tokens=40)
            [record] = await proxy.wait_records(1)
        await no_connection_held(proxy)
        [written] = await origin.wait_over(1)
    assert record.end == "client gone"
    assert record.usage is None
    assert written.broken and not written.finished


# -- the drain's bounds


async def test_drain_bounds_default_to_one_mebibyte_and_thirty_seconds_and_follow_the_keys() -> None:
    async with llm_origin() as origin:
        config = usage_config(origin)
        config["routes"].append(
            {
                "name": "bounded",
                "path_prefix": "/bounded/",
                "upstream": "llm",
                "usage": "anthropic",
                "usage_drain_bytes": 4096,
                "usage_drain_seconds": 2.5,
            }
        )
        async with gateway(config) as proxy:
            routes = proxy.proxy.routing.by_name
            assert routes["chat"].drain == DisconnectPolicy.drain(max_bytes=1 << 20, timeout=30.0)
            assert routes["bounded"].drain == DisconnectPolicy.drain(max_bytes=4096, timeout=2.5)


async def test_drain_cut_by_bytes_ends_drained_with_partial_usage_and_closes_the_upstream() -> None:
    # 200 tokens at one event per 10 ms: some 40 kB over two seconds; the route reads on for 600 bytes.
    async with llm_origin(first_delay=0.1, delay=0.01) as origin:
        config = usage_config(origin, usage_drain_bytes=600)
        async with gateway(config) as proxy:
            async with sdk_for(proxy) as client:
                await read_then_leave(client, 0, max_tokens=200)
                [record] = await proxy.wait_records(1)
            await no_connection_held(proxy)
            [written] = await origin.wait_over(1)
    assert record.end == "drained"
    assert written.broken and not written.finished
    assert written.events < 100, f"the origin wrote {written.events} events: the cut came late"
    # The first chunk named the model; the usage chunk at the end was never read.
    assert record.usage == Usage(input_tokens=None, output_tokens=None, model=MODEL, complete=False)
    assert record.duration < 1.5


async def test_drain_bytes_zero_cuts_at_the_first_chunk_after_the_disconnect() -> None:
    async with llm_origin(first_delay=0.1, delay=0.01) as origin:
        async with gateway(usage_config(origin, usage_drain_bytes=0)) as proxy:
            async with sdk_for(proxy) as client:
                await read_then_leave(client, 0, max_tokens=200)
                [record] = await proxy.wait_records(1)
            await no_connection_held(proxy)
            [written] = await origin.wait_over(1)
    assert record.end == "drained"
    assert written.broken and written.events < 100
    assert record.usage is not None and not record.usage.complete and record.usage.input_tokens is None


async def test_drain_cut_by_time_ends_drained_and_closes_the_upstream() -> None:
    # An origin that would stream for 20 s (one event per 0.1 s); the route reads on for 0.4 s.
    async with llm_origin(delay=0.1) as origin:
        async with gateway(usage_config(origin, usage_drain_seconds=0.4)) as proxy:
            async with sdk_for(proxy) as client:
                await read_then_leave(client, 2, max_tokens=200)
                left = asyncio.get_running_loop().time()
                [record] = await proxy.wait_records(1)
                waited = asyncio.get_running_loop().time() - left
            await no_connection_held(proxy)
            [written] = await origin.wait_over(1)
    assert 0.3 < waited < 2.0, f"the drain ended {waited:.2f} s after the client left"
    assert record.end == "drained"
    assert written.broken and not written.finished and written.events < 50
    assert record.usage == Usage(input_tokens=None, output_tokens=None, model=MODEL, complete=False)


async def test_drain_within_its_bounds_is_not_cut() -> None:
    # The whole stream fits both bounds (a few kB, about half a second): read to its end.
    async with llm_origin(first_delay=0.1, delay=0.02) as origin:
        config = usage_config(origin, usage_drain_bytes=64 * 1024, usage_drain_seconds=3)
        async with gateway(config) as proxy, sdk_for(proxy) as client:
            await read_then_leave(client, 1, max_tokens=20)
            [record] = await proxy.wait_records(1)
        [written] = await origin.wait_over(1)
    assert written.finished
    assert record.end == "drained"
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=20, model=MODEL, complete=True)


async def test_a_usage_drain_seconds_the_config_accepts_also_starts_the_gateway() -> None:
    async with llm_origin() as origin:
        config = usage_config(origin, usage_drain_seconds=0)
        try:
            config_from_dict(config)
        except ConfigError as exc:
            assert "usage_drain_seconds" in str(exc)
            return
        async with gateway(config) as proxy, sdk_for(proxy) as client:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)


# -- the access log and the metrics


async def test_access_log_shows_the_usage_of_a_drained_stream(caplog: pytest.LogCaptureFixture) -> None:
    async with llm_origin(first_delay=0.1, delay=0.03) as origin:
        with caplog.at_level(logging.INFO, logger="fastpipe.access"):
            async with gateway(usage_config(origin), access_log=True) as proxy, sdk_for(proxy) as client:
                await read_then_leave(client, 3, max_tokens=7)
                await proxy.wait_records(1)
                await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
                await proxy.wait_records(2)
    lines = [entry.getMessage() for entry in caplog.records if entry.name == "fastpipe.access"]
    assert len(lines) == 2, lines
    drained, whole = lines
    assert " end=drained " in drained and " route=chat " in drained
    assert drained.endswith(f" usage_in={PROMPT} usage_out=7"), drained
    assert " end=complete " in whole and whole.endswith(f" usage_in={PROMPT} usage_out=2"), whole


async def test_access_log_shows_unknown_counts_as_dashes(caplog: pytest.LogCaptureFixture) -> None:
    async with llm_origin(first_delay=0.1, delay=0.01) as origin:
        with caplog.at_level(logging.INFO, logger="fastpipe.access"):
            async with gateway(usage_config(origin, usage_drain_bytes=0), access_log=True) as proxy:
                async with sdk_for(proxy) as client:
                    await read_then_leave(client, 0, max_tokens=100)
                    await proxy.wait_records(1)
                await no_connection_held(proxy)
    [line] = [entry.getMessage() for entry in caplog.records if entry.name == "fastpipe.access"]
    assert " end=drained " in line and " usage_in=- usage_out=-" in line, line


async def test_metrics_count_the_tokens_of_whole_and_drained_streams() -> None:
    metrics = GatewayMetrics()

    def tokens(kind: str) -> float | None:
        return metrics.get_sample_value("fastpipe_usage_tokens_total", {"route": "chat", "kind": kind})

    def ended(reason: str) -> float | None:
        return metrics.get_sample_value("fastpipe_exchanges_ended_total", {"route": "chat", "reason": reason})

    async with llm_origin(first_delay=0.1, delay=0.02) as origin:
        async with gateway(usage_config(origin), metrics=metrics) as proxy, sdk_for(proxy) as client:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
            await read_then_leave(client, 2, max_tokens=5)
            await proxy.wait_records(2)
    assert (tokens("input"), tokens("output")) == (2 * PROMPT, 3 + 5)
    assert (ended("complete"), ended("drained")) == (1, 1)


# -- Anthropic (the anthropic SDK is not installed here: httpx speaks the API)

ANTHROPIC_REQUEST = {"model": "claude-test", "max_tokens": 6, "messages": MESSAGES}


@asynccontextmanager
async def anthropic_gateway(origin: LLMOrigin, **route: Any) -> AsyncIterator[Gateway]:
    async with gateway(usage_config(origin, usage="anthropic", **route)) as proxy:
        yield proxy


async def test_anthropic_json_response_reports_its_usage() -> None:
    async with llm_origin() as origin, anthropic_gateway(origin) as proxy:
        response = await proxy.client.post("/v1/messages", json=ANTHROPIC_REQUEST)
        [record] = await proxy.wait_records(1)
    assert response.status_code == 200 and response.json()["content"][0]["text"] == completion_text(6)
    assert record.end == "complete"
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=6, model="claude-test", complete=True)


async def test_anthropic_stream_read_whole_reports_its_usage() -> None:
    async with llm_origin(delay=0.01) as origin, anthropic_gateway(origin) as proxy:
        async with proxy.client.stream("POST", "/v1/messages", json={**ANTHROPIC_REQUEST, "stream": True}) as response:
            text = await response.aread()
        [record] = await proxy.wait_records(1)
    assert response.status_code == 200 and text.rstrip().endswith(b'data: {"type": "message_stop"}')
    assert record.end == "complete"
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=6, model="claude-test", complete=True)


async def leave_anthropic_stream(proxy: Gateway, events: int) -> list[str]:
    """Stream a message and read ``events`` events (0: none, only the head), then close the connection."""
    seen: list[str] = []
    async with proxy.client.stream("POST", "/v1/messages", json={**ANTHROPIC_REQUEST, "stream": True}) as response:
        assert response.status_code == 200
        if events:
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    seen.append(line.removeprefix("event: "))
                    if len(seen) == events:
                        break
    return seen  # leaving the block before the body's end closes the connection


@pytest.mark.parametrize("events", [0, 4], ids=["before the first token", "mid-stream"])
async def test_anthropic_stream_left_early_is_drained_and_still_reports_its_usage(events: int) -> None:
    async with llm_origin(first_delay=0.2, delay=0.05) as origin, anthropic_gateway(origin) as proxy:
        seen = await leave_anthropic_stream(proxy, events)
        [record] = await proxy.wait_records(1)
        [written] = await origin.wait_over(1)
    assert len(seen) == events
    assert written.finished and not written.broken
    assert record.end == "drained"
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=6, model="claude-test", complete=True)


async def test_anthropic_drain_cut_by_time_keeps_what_message_start_said() -> None:
    async with llm_origin(delay=0.1) as origin, anthropic_gateway(origin, usage_drain_seconds=0.3) as proxy:
        seen = await leave_anthropic_stream(proxy, 1)
        [record] = await proxy.wait_records(1)
        await no_connection_held(proxy)
        [written] = await origin.wait_over(1)
    assert seen == ["message_start"]
    assert written.broken and not written.finished
    assert record.end == "drained"
    # message_start's counts (input, and the first output token) were read; message_delta never came.
    assert record.usage == Usage(input_tokens=PROMPT, output_tokens=1, model="claude-test", complete=False)
