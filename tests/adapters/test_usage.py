"""fastpipe.usage: the provider parsers, capture_usage on both Pipes, and a gateway driven by the openai SDK.

The parsers are fed the events exactly as the providers frame them (``_support.openai_chunks`` and
``anthropic_events``), through the real EventTap, cut at every byte boundary. The gateway tests run a
FastAPI app on uvicorn in front of the local OpenAI-compatible origin, and the client is the real
``openai`` SDK: a whole stream, a non-streaming call, and a client that leaves after the first chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from types import ModuleType
from typing import Any, AsyncIterator

import httpx
import openai
import pytest
from fastapi import FastAPI, Request

from fastpipe.asgi import PipeResponse
from fastpipe.disconnect import DisconnectPolicy
from fastpipe.end_reason import EndReason
from fastpipe.sources import from_httpx
from fastpipe.sse import EventTap
from fastpipe.usage import AnthropicUsage, OpenAIUsage, Usage, capture_usage, usage_parser

from ..pipe._support import loop_errors
from ._support import Origin, anthropic_events, asgi_server, chunks, openai_chunks, origin_server, wait_until


def parse_stream(parser: Any, body: bytes, cut: int | None = None) -> Usage:
    """Feed ``body`` through a real EventTap, in pieces of ``cut`` bytes (None: whole)."""
    tap = EventTap(lambda event: parser.feed_event(event.data, event.event))
    step = cut or len(body)
    for at in range(0, len(body), step):
        tap(body[at : at + step])
    return parser.usage  # type: ignore[no-any-return]


# -- the parsers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [None, 1, 7, 64])
def test_openai_stream_with_include_usage(cut: int | None) -> None:
    body = b"".join(openai_chunks("gpt-test", 6, include_usage=True))
    assert parse_stream(OpenAIUsage(), body, cut) == Usage(7, 6, "gpt-test", True)


def test_openai_stream_without_include_usage_is_complete_with_no_counts() -> None:
    body = b"".join(openai_chunks("gpt-test", 3, include_usage=False))
    assert parse_stream(OpenAIUsage(), body) == Usage(None, None, "gpt-test", True)


def test_openai_stream_cut_before_done_is_incomplete_but_keeps_what_it_saw() -> None:
    events = openai_chunks("gpt-test", 4, include_usage=True)
    assert parse_stream(OpenAIUsage(), b"".join(events[:-1])) == Usage(7, 4, "gpt-test", False)
    assert parse_stream(OpenAIUsage(), b"".join(events[:2])) == Usage(None, None, "gpt-test", False)


@pytest.mark.parametrize("cut", [None, 1, 13])
def test_anthropic_stream(cut: int | None) -> None:
    body = b"".join(anthropic_events("claude-test", 5))
    assert parse_stream(AnthropicUsage(), body, cut) == Usage(9, 5, "claude-test", True)


def test_anthropic_stream_cut_or_failed_is_incomplete() -> None:
    events = anthropic_events("claude-test", 5)
    assert parse_stream(AnthropicUsage(), b"".join(events[:-2])) == Usage(9, 1, "claude-test", False)
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n'
    assert parse_stream(AnthropicUsage(), b"".join(events[:3]) + error + events[-1]).complete is False


def test_anthropic_events_without_an_event_field_are_read_by_their_type() -> None:
    body = b"".join(event.split(b"\n", 1)[1] for event in anthropic_events("claude-test", 2))
    assert parse_stream(AnthropicUsage(), body) == Usage(9, 2, "claude-test", True)


def test_non_streaming_bodies() -> None:
    openai_body = {"model": "gpt-test", "usage": {"prompt_tokens": 3, "completion_tokens": 4}, "choices": []}
    parser = OpenAIUsage()
    parser.feed_body(json.dumps(openai_body).encode())
    assert parser.usage == Usage(3, 4, "gpt-test", True)
    anthropic = AnthropicUsage()
    anthropic.feed_body(json.dumps({"type": "message", "model": "c", "usage": {"input_tokens": 1, "output_tokens": 2}}))
    assert anthropic.usage == Usage(1, 2, "c", True)
    truncated = OpenAIUsage()
    truncated.feed_body(json.dumps(openai_body).encode()[:-5])
    assert truncated.usage == Usage(None, None, None, False)
    garbage = AnthropicUsage()
    garbage.feed_body(b'{"model": 5, "usage": {"input_tokens": -1, "output_tokens": true}}')
    assert garbage.usage == Usage(None, None, None, True), "counts that are not counts are not reported"


def test_usage_is_a_frozen_record_and_bad_providers_are_refused() -> None:
    usage = Usage(1, 2, "m", True)
    with pytest.raises(AttributeError):
        usage.input_tokens = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="usage provider must be one of"):
        usage_parser("mistral")
    assert isinstance(usage_parser("anthropic"), AnthropicUsage)


# -- capture_usage on a pipe ---------------------------------------------------------------------------------


async def body_source(parts: list[bytes], then: str = "end") -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part
    if then == "fail":
        raise ConnectionResetError("the provider died")


async def test_capture_usage_calls_back_once_with_the_usage_and_the_end_reason(impl: ModuleType) -> None:
    calls: list[tuple[Usage, EndReason]] = []
    body = openai_chunks("gpt-test", 4, include_usage=True)
    pipe = capture_usage(impl.Pipe(body_source(body)), "openai", lambda u, r: calls.append((u, r)))
    assert b"".join([chunk async for chunk in pipe]) == b"".join(body)
    await pipe.aclose()
    assert calls == [(Usage(7, 4, "gpt-test", True), EndReason.COMPLETE)]


async def test_capture_usage_sees_a_json_body(impl: ModuleType) -> None:
    calls: list[tuple[Usage, EndReason]] = []
    payload = json.dumps({"model": "claude-test", "usage": {"input_tokens": 2, "output_tokens": 3}}).encode()
    parts = [b"  \n", payload[:10], payload[10:]]
    pipe = capture_usage(impl.Pipe(body_source(parts)), "anthropic", lambda u, r: calls.append((u, r)))
    assert [chunk async for chunk in pipe] == parts
    assert calls == [(Usage(2, 3, "claude-test", True), EndReason.COMPLETE)]


async def test_capture_usage_reports_a_failed_or_cancelled_stream_once(impl: ModuleType) -> None:
    calls: list[tuple[Usage, EndReason]] = []
    events = anthropic_events("claude-test", 4)
    failing = capture_usage(impl.Pipe(body_source(events[:3], "fail")), "anthropic", lambda u, r: calls.append((u, r)))
    with pytest.raises(ConnectionResetError):
        async for _chunk in failing:
            pass
    cancelled = capture_usage(impl.Pipe(chunks(3, 10)), "openai", lambda u, r: calls.append((u, r)))
    await cancelled.__anext__()
    cancelled.cancel(EndReason.CLIENT_GONE)
    assert calls == [
        (Usage(9, 1, "claude-test", False), EndReason.UPSTREAM_ERROR),
        (Usage(None, None, None, False), EndReason.CLIENT_GONE),
    ]


async def test_a_failing_usage_callback_goes_to_the_loop_not_into_the_stream(impl: ModuleType) -> None:
    with loop_errors() as errors:
        pipe = capture_usage(impl.Pipe(body_source([b"data: [DONE]\n\n"])), "openai", lambda u, r: 1 / 0)
        assert [chunk async for chunk in pipe] == [b"data: [DONE]\n\n"]
    assert [type(context["exception"]) for context in errors] == [ZeroDivisionError]


async def test_capture_usage_refuses_bad_arguments(impl: ModuleType) -> None:
    pipe = impl.Pipe(chunks(1, 1))
    with pytest.raises(ValueError, match="provider"):
        capture_usage(pipe, "nobody", print)
    with pytest.raises(TypeError, match="callable"):
        capture_usage(pipe, "openai", "print")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="UsageParser"):
        capture_usage(pipe, object(), print)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_body"):
        capture_usage(pipe, "openai", print, max_body=-1)
    await pipe.aclose()


# -- a gateway in front of an OpenAI-compatible provider, driven by the openai SDK -------------------------


@contextlib.asynccontextmanager
async def usage_gateway(impl: ModuleType, upstream: str, usages: list[tuple[Usage, EndReason]]) -> AsyncIterator[str]:
    """The documented gateway: FastAPI + httpx + from_httpx + capture_usage + PipeResponse; yields its URL."""
    app = FastAPI()
    drain = DisconnectPolicy.drain(max_bytes=1 << 20, timeout=5)
    async with httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(10, read=None)) as client:

        @app.post("/v1/{path:path}")
        async def proxy(path: str, request: Request) -> PipeResponse:
            upstream_request = client.build_request("POST", f"/v1/{path}", content=await request.body())
            response = await client.send(upstream_request, stream=True)
            pipe = from_httpx(response, on_disconnect=drain, pipe_type=impl.Pipe)
            capture_usage(pipe, "openai", lambda usage, outcome: usages.append((usage, outcome)))
            return PipeResponse(
                pipe, status=response.status_code, headers={"content-type": response.headers["content-type"]}
            )

        async with asgi_server("uvicorn-httptools", app) as port:
            yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with origin_server() as server:
        yield server


async def test_openai_sdk_stream_through_the_gateway_reports_usage(impl: ModuleType, origin: Origin) -> None:
    usages: list[tuple[Usage, EndReason]] = []
    async with usage_gateway(impl, origin.url(""), usages) as base_url:
        sdk = openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)
        stream = await sdk.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        contents, sdk_usage = [], None
        async for chunk in stream:
            contents.extend(choice.delta.content for choice in chunk.choices)
            sdk_usage = chunk.usage or sdk_usage
        await wait_until(lambda: bool(usages), 2, "the usage callback")
        await sdk.close()
    assert "".join(contents) == "".join(f"tok{i} " for i in range(6))
    assert sdk_usage is not None and (sdk_usage.prompt_tokens, sdk_usage.completion_tokens) == (7, 6)
    assert usages == [(Usage(7, 6, "gpt-test", True), EndReason.COMPLETE)]


async def test_openai_sdk_non_streaming_call_through_the_gateway(impl: ModuleType, origin: Origin) -> None:
    usages: list[tuple[Usage, EndReason]] = []
    async with usage_gateway(impl, origin.url(""), usages) as base_url:
        sdk = openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)
        completion = await sdk.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        await wait_until(lambda: bool(usages), 2, "the usage callback")
        await sdk.close()
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert usages == [(Usage(7, 3, "gpt-test", True), EndReason.COMPLETE)]


async def test_openai_sdk_client_leaving_early_still_bills_the_drained_stream(impl: ModuleType, origin: Origin) -> None:
    usages: list[tuple[Usage, EndReason]] = []
    async with usage_gateway(impl, origin.url(""), usages) as base_url:
        sdk = openai.AsyncOpenAI(base_url=base_url, api_key="test", max_retries=0)
        stream = await sdk.chat.completions.create(
            model="gpt-test-slow",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for _chunk in stream:
            break  # the user closed the tab
        await stream.close()
        await wait_until(lambda: bool(usages), 3, "the usage callback")
        await sdk.close()
    assert usages == [(Usage(7, 10, "gpt-test-slow", True), EndReason.DRAINED)]
    assert origin.exchanges[0].outcome == "complete"


# -- the LiteLLM shape end to end: a per-request handler whose finalizer closes its client ------------------


class ProviderHandler:
    """Per request, as LiteLLM's handler: its own httpx client, closed by its finalizer."""

    closing: set[asyncio.Task[None]] = set()

    def __init__(self, base_url: str) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10, read=None))
        self.loop = asyncio.get_running_loop()

    async def stream(self, body: bytes) -> httpx.Response:
        request = self.client.build_request("POST", "/v1/chat/completions", content=body)
        return await self.client.send(request, stream=True)

    def __del__(self) -> None:
        task = self.loop.create_task(self.client.aclose())
        ProviderHandler.closing.add(task)
        task.add_done_callback(ProviderHandler.closing.discard)


@pytest.mark.parametrize("keep_handler", [True, False], ids=["owner=handler", "no-owner"])
async def test_litellm_shaped_gateway_under_forced_gc(impl: ModuleType, origin: Origin, keep_handler: bool) -> None:
    """FastAPI gateway, gc.collect() every 5 ms, the openai SDK as client. With ``owner=handler`` the
    stream arrives whole and is billed complete; the same gateway without it loses the stream."""
    app = FastAPI()
    usages: list[tuple[Usage, EndReason]] = []

    @app.post("/v1/chat/completions")
    async def route(request: Request) -> PipeResponse:
        handler = ProviderHandler(origin.url(""))
        upstream = await handler.stream(await request.body())
        pipe = from_httpx(upstream, owner=handler if keep_handler else None, pipe_type=impl.Pipe)
        capture_usage(pipe, "openai", lambda usage, outcome: usages.append((usage, outcome)))
        return PipeResponse(pipe, headers={"content-type": "text/event-stream"})

    async def collect() -> None:
        for _ in range(4000):  # bounded: 20 s
            gc.collect()
            await asyncio.sleep(0.005)

    collector = asyncio.ensure_future(collect())
    text, failure = "", None
    try:
        async with asgi_server("uvicorn-httptools", app) as port:
            sdk = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="test", max_retries=0)
            try:
                stream = await sdk.chat.completions.create(
                    model="gpt-test-slow",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=12,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    text += "".join(choice.delta.content or "" for choice in chunk.choices)
            except Exception as exc:
                failure = exc
            await wait_until(lambda: bool(usages), 3, "the usage callback")
            await sdk.close()
    finally:
        collector.cancel()
        await asyncio.gather(collector, *ProviderHandler.closing, return_exceptions=True)
    whole = "".join(f"tok{i} " for i in range(12))
    if keep_handler:
        assert failure is None and text == whole
        assert usages == [(Usage(7, 12, "gpt-test-slow", True), EndReason.COMPLETE)]
    else:
        assert failure is not None or text != whole, "negative control: the handler's finalizer should cut it"
        assert usages[0][0].complete is False and usages[0][1] == EndReason.UPSTREAM_ERROR
