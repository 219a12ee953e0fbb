"""A fake LLM provider for the gateway tests: a real aiohttp server on 127.0.0.1 that speaks the OpenAI chat
completions API and the Anthropic messages API, streamed (Server-Sent Events) or as one JSON body.

The streams are paced (``head_delay`` before the response head, ``first_delay`` before the first token,
``delay`` between events) so that a client can leave before the first token, mid-stream or after the usage
event. Every response is kept as a :class:`Written`: what the request was and how far the origin got
writing its answer. The token counts are predictable: ``prompt_tokens(messages)`` in, ``max_tokens`` out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ._gateway_support import AppOrigin, running

DEFAULT_TOKENS = 4


def prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """The input tokens the origin reports: the words of every message's content."""
    return sum(len(str(message.get("content", "")).split()) for message in messages)


def completion_text(count: int) -> str:
    return "".join(f"tok{index} " for index in range(count))


@dataclass
class Written:
    """One response as the origin wrote it."""

    api: str  # "openai" or "anthropic"
    streamed: bool
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    peer_port: int  # the client side's port: the same port twice means a reused connection
    events: int = 0  # Server-Sent Events written
    finished: bool = False  # the whole response was written, to its end marker and the last chunk
    broken: bool = False  # a write failed or the handler was cancelled: the reader went away
    over: asyncio.Event = field(default_factory=asyncio.Event)  # the handler returned, however


class LLMOrigin(AppOrigin):
    """``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic) on a free port."""

    def __init__(self, *, head_delay: float = 0.0, first_delay: float = 0.0, delay: float = 0.0) -> None:
        self.head_delay = head_delay  # before the response head
        self.first_delay = first_delay  # after the head, before the first token
        self.delay = delay  # between events (and before the end marker)
        self.written: list[Written] = []

    async def wait_over(self, count: int = 1, timeout: float = 10.0) -> list[Written]:
        """The first ``count`` responses, once their handlers have all returned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.written) < count:
            if loop.time() > deadline:
                raise AssertionError(f"the origin got {len(self.written)} of {count} requests")
            await asyncio.sleep(0.01)
        for written in self.written[:count]:
            await asyncio.wait_for(written.over.wait(), max(0.01, deadline - loop.time()))
        return self.written[:count]

    # -- the two APIs

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        written, body = await self._begin(request, "openai")
        model = str(body.get("model", "gpt-test"))
        count = int(body.get("max_tokens") or DEFAULT_TOKENS)
        usage = {
            "prompt_tokens": prompt_tokens(body.get("messages", [])),
            "completion_tokens": count,
            "total_tokens": prompt_tokens(body.get("messages", [])) + count,
        }
        try:
            await self._sleep(self.head_delay)
            if not written.streamed:
                written.finished = True
                return web.json_response(
                    {
                        "id": "chatcmpl-1",
                        "object": "chat.completion",
                        "created": 1700000000,
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": completion_text(count)},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                )
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            def chunk(delta: dict[str, Any], finish: str | None = None, with_usage: Any = None) -> dict[str, Any]:
                made: dict[str, Any] = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                if include_usage:
                    made["usage"] = with_usage  # null on every chunk but the last
                return made

            response = await self._open_stream(request)
            await self._sleep(self.first_delay)
            await self._send(written, response, chunk({"role": "assistant", "content": ""}))
            for index in range(count):
                await self._sleep(self.delay)
                await self._send(written, response, chunk({"content": f"tok{index} "}))
            await self._sleep(self.delay)
            await self._send(written, response, chunk({}, "stop"))
            if include_usage:
                await self._sleep(self.delay)
                last = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1700000000,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                await self._send(written, response, last)
            await self._sleep(self.delay)
            await self._write(written, response, b"data: [DONE]\n\n")
            await response.write_eof()
            written.finished = True
            return response
        except (ConnectionError, asyncio.CancelledError):
            written.broken = True
            raise
        finally:
            written.over.set()

    async def messages(self, request: web.Request) -> web.StreamResponse:
        written, body = await self._begin(request, "anthropic")
        model = str(body.get("model", "claude-test"))
        count = int(body.get("max_tokens") or DEFAULT_TOKENS)
        tokens_in = prompt_tokens(body.get("messages", []))
        try:
            await self._sleep(self.head_delay)
            if not written.streamed:
                written.finished = True
                return web.json_response(
                    {
                        "id": "msg_1",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [{"type": "text", "text": completion_text(count)}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": tokens_in, "output_tokens": count},
                    }
                )
            response = await self._open_stream(request)
            start = {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": tokens_in, "output_tokens": 1},
                },
            }
            await self._send(written, response, start, "message_start")
            await self._sleep(self.first_delay)
            block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            await self._send(written, response, block, "content_block_start")
            await self._send(written, response, {"type": "ping"}, "ping")
            for index in range(count):
                await self._sleep(self.delay)
                delta = {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": f"tok{index} "},
                }
                await self._send(written, response, delta, "content_block_delta")
            await self._send(written, response, {"type": "content_block_stop", "index": 0}, "content_block_stop")
            await self._sleep(self.delay)
            end = {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": count},
            }
            await self._send(written, response, end, "message_delta")
            await self._sleep(self.delay)
            await self._send(written, response, {"type": "message_stop"}, "message_stop")
            await response.write_eof()
            written.finished = True
            return response
        except (ConnectionError, asyncio.CancelledError):
            written.broken = True
            raise
        finally:
            written.over.set()

    # -- the parts

    async def _begin(self, request: web.Request, api: str) -> tuple[Written, dict[str, Any]]:
        body = await request.json()
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        written = Written(
            api=api,
            streamed=bool(body.get("stream")),
            path=request.path_qs,
            headers=dict(request.headers),
            body=body,
            peer_port=int(peer[1]) if peer else 0,
        )
        self.written.append(written)
        return written, body

    @staticmethod
    async def _sleep(seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)

    @staticmethod
    async def _open_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)  # aiohttp sends the head now, before any event
        return response

    async def _send(
        self, written: Written, response: web.StreamResponse, data: dict[str, Any], event: str = ""
    ) -> None:
        line = f"event: {event}\n" if event else ""
        await self._write(written, response, f"{line}data: {json.dumps(data)}\n\n".encode())

    @staticmethod
    async def _write(written: Written, response: web.StreamResponse, payload: bytes) -> None:
        await response.write(payload)
        written.events += 1

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/messages", self.messages)


@asynccontextmanager
async def llm_origin(**pacing: float) -> AsyncIterator[LLMOrigin]:
    async with running(LLMOrigin(**pacing)) as (origin,):
        yield origin
