"""Usage capture: the token counts an LLM provider reports, read from its response while the body passes.

Two layers, usable apart:

* **Parsers** — pure, incremental and free of asyncio, so a proxy can run them on its hot path:
  ``OpenAIUsage`` and ``AnthropicUsage`` take Server-Sent Events one at a time (``feed_event(data,
  event)``) or a whole JSON body (``feed_body(body)``), and ``parser.usage`` is a frozen ``Usage``
  record at any moment. Per event they do as little as they can: an OpenAI chunk is parsed as JSON only
  while the model is unknown or when it carries a non-null ``usage``; an Anthropic event only when its
  type is one that carries usage.
* **capture_usage(pipe, provider, callback)** — the one line a gateway needs: a tap that feeds the
  parser, and a done callback that calls ``callback(usage, end_reason)`` exactly once when the pipe
  finishes, however it finishes. With ``pipe.on_disconnect = DisconnectPolicy.drain(...)`` the sink
  reads on after an early disconnect, so the usage at the end of the stream is still seen.

What the providers send:

=========================  ===============================================================================
OpenAI, streaming          ``data: {chunk}`` events, then ``data: [DONE]``; with ``stream_options:
                           {"include_usage": true}`` the last chunk has ``usage.prompt_tokens`` and
                           ``usage.completion_tokens`` (the others ``"usage": null``)
OpenAI, JSON               ``{"model": ..., "usage": {"prompt_tokens": n, "completion_tokens": m}}``
Anthropic, streaming       ``message_start`` (``message.model``, ``message.usage.input_tokens``), then
                           ``message_delta`` (``usage.output_tokens``, cumulative), ending ``message_stop``
Anthropic, JSON            ``{"model": ..., "usage": {"input_tokens": n, "output_tokens": m}}``
=========================  ===============================================================================

``Usage.complete`` says whether the response reached its end marker (``[DONE]``, ``message_stop``, or a
JSON body that parsed whole); the pipe's ``end_reason`` says how the transfer ended. A gateway bills by
both: a drained stream that completed is billable although its client left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union

from ._backend import Pipe
from ._errors import report_callback_error
from .end_reason import EndReason
from .sse import Event, EventTap

__all__ = (
    "DEFAULT_MAX_BODY",
    "PROVIDERS",
    "AnthropicUsage",
    "OpenAIUsage",
    "Usage",
    "UsageParser",
    "capture_usage",
    "usage_parser",
)

DEFAULT_MAX_BODY = 8 << 20  # a non-streaming body is kept for parsing up to this size

Body = Union[bytes, bytearray, memoryview, str]


@dataclass(frozen=True)
class Usage:
    """Token counts and model as the provider reported them (None: not reported, or not yet)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    complete: bool = False


class UsageParser(Protocol):
    """What ``capture_usage`` (and the proxy) drive: events or a body in, a ``Usage`` out."""

    def feed_event(self, data: str, event: str = "message") -> None: ...

    def feed_body(self, body: Body) -> None: ...

    @property
    def usage(self) -> Usage: ...


def _count(value: object) -> int | None:
    # A token count is a non-negative int; anything else (a bool, a float, garbage) is not reported.
    return value if type(value) is int and value >= 0 else None


def _has_usage(data: str) -> bool:
    """Whether an OpenAI chunk carries a non-null ``usage``, found without parsing the JSON."""
    at = data.rfind('"usage"')  # the key comes last in OpenAI chunks; rfind meets it first
    if at < 0:
        return False
    rest = data[at + 7 : at + 16].lstrip(" \t:")
    return not rest.startswith("null")


def _load_object(data: Body) -> dict[str, Any] | None:
    try:
        value = json.loads(bytes(data) if isinstance(data, memoryview) else data)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


class OpenAIUsage:
    """OpenAI chat completions (and compatible providers): streaming chunks or a JSON body."""

    __slots__ = ("_complete", "_input", "_model", "_output")

    def __init__(self) -> None:
        self._input: int | None = None
        self._output: int | None = None
        self._model: str | None = None
        self._complete = False

    def feed_event(self, data: str, event: str = "message") -> None:
        if data == "[DONE]":
            self._complete = True
            return
        if self._model is not None and not _has_usage(data):
            return  # the common case: a content delta, not parsed at all
        chunk = _load_object(data)
        if chunk is not None:
            self._take(chunk)

    def feed_body(self, body: Body) -> None:
        response = _load_object(body)
        if response is not None and "error" not in response:
            self._take(response)
            self._complete = True

    def _take(self, obj: dict[str, Any]) -> None:
        model = obj.get("model")
        if self._model is None and isinstance(model, str):
            self._model = model
        usage = obj.get("usage")
        if isinstance(usage, dict):
            # Chat completions say prompt/completion; the Responses API says input/output.
            self._input = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
            self._output = _count(usage.get("completion_tokens", usage.get("output_tokens")))

    @property
    def usage(self) -> Usage:
        return Usage(self._input, self._output, self._model, self._complete)


# Anthropic event types that carry usage or the end; every other type (deltas, pings) is not parsed.
_ANTHROPIC_PARSED = frozenset(("message_start", "message_delta", "message_stop", "message", "error"))


class AnthropicUsage:
    """Anthropic messages: the ``message_start``/``message_delta``/``message_stop`` events, or a JSON body."""

    __slots__ = ("_complete", "_failed", "_input", "_model", "_output")

    def __init__(self) -> None:
        self._input: int | None = None
        self._output: int | None = None
        self._model: str | None = None
        self._complete = False
        self._failed = False

    def feed_event(self, data: str, event: str = "message") -> None:
        if event not in _ANTHROPIC_PARSED:
            return
        payload = _load_object(data)
        if payload is None:
            return
        kind = payload.get("type", event) if event == "message" else event
        if kind == "message_start":
            message = payload.get("message")
            if isinstance(message, dict):
                self._take_model(message)
                self._take_usage(message.get("usage"))
        elif kind == "message_delta":
            self._take_usage(payload.get("usage"))
        elif kind == "message_stop":
            self._complete = not self._failed
        elif kind == "error":
            self._failed = True
            self._complete = False

    def feed_body(self, body: Body) -> None:
        message = _load_object(body)
        if message is not None and message.get("type") != "error":
            self._take_model(message)
            self._take_usage(message.get("usage"))
            self._complete = True

    def _take_model(self, message: dict[str, Any]) -> None:
        model = message.get("model")
        if isinstance(model, str):
            self._model = model

    def _take_usage(self, usage: object) -> None:
        # message_delta counts are cumulative: the last one seen is the total.
        if isinstance(usage, dict):
            if (count := _count(usage.get("input_tokens"))) is not None:
                self._input = count
            if (count := _count(usage.get("output_tokens"))) is not None:
                self._output = count

    @property
    def usage(self) -> Usage:
        return Usage(self._input, self._output, self._model, self._complete)


PROVIDERS: dict[str, Callable[[], UsageParser]] = {"openai": OpenAIUsage, "anthropic": AnthropicUsage}


def usage_parser(provider: str) -> UsageParser:
    """A fresh parser for ``provider`` ("openai" or "anthropic"); ValueError for any other name."""
    try:
        factory = PROVIDERS[provider]
    except (KeyError, TypeError):
        raise ValueError(f"usage provider must be one of {sorted(PROVIDERS)}, got {provider!r}") from None
    return factory()


OnUsage = Callable[[Usage, EndReason], object]


def capture_usage(
    pipe: Pipe,
    provider: str | UsageParser,
    callback: OnUsage,
    *,
    max_body: int = DEFAULT_MAX_BODY,
) -> Pipe:
    """Read ``provider``'s usage from ``pipe`` as it passes; ``callback(usage, end_reason)`` once at its end.

    ``provider`` is "openai", "anthropic" or a parser. Streaming or not is seen from the body itself: a
    body starting with ``{`` is JSON (kept up to ``max_body`` bytes, then parsed once at the end),
    anything else is read as Server-Sent Events. The chunks are not copied or changed. The callback
    runs exactly once, after the pipe released its owner, also when the pipe errored or was cancelled
    (then ``usage`` has what was seen so far); an exception from it goes to the loop's handler. Returns
    the pipe.
    """
    parser = usage_parser(provider) if isinstance(provider, str) else provider
    if not callable(getattr(parser, "feed_event", None)) or not callable(getattr(parser, "feed_body", None)):
        raise TypeError(f"capture_usage() needs a provider name or a UsageParser, got {type(provider).__name__}")
    if not callable(callback):
        raise TypeError(f"capture_usage() needs a callable, got {type(callback).__name__}")
    if type(max_body) is not int or max_body < 0:
        raise ValueError(f"max_body must be an int >= 0, got {max_body!r}")
    capture = _Capture(parser, callback, max_body)
    pipe.tap(capture)
    pipe.add_done_callback(capture.finish)
    return pipe


class _Capture:
    """The tap and the done callback of one ``capture_usage``."""

    __slots__ = ("_body", "_body_size", "_callback", "_events", "_max_body", "_parser")

    def __init__(self, parser: UsageParser, callback: OnUsage, max_body: int) -> None:
        self._parser = parser
        self._callback: OnUsage | None = callback
        self._max_body = max_body
        # Undecided until the first byte that is not whitespace: then exactly one of these is set, or
        # neither again once a JSON body outgrew max_body (its usage stays unknown).
        self._events: EventTap | None = None
        self._body: list[bytes] | None = None
        self._body_size = -1  # -1: undecided

    def __call__(self, chunk: Any) -> None:
        if self._events is not None:
            self._events(chunk)
        elif self._body is not None:
            self._keep(chunk)
        elif self._body_size < 0:
            self._decide(chunk)

    def _decide(self, chunk: Any) -> None:
        first = bytes(chunk).lstrip()[:1]
        if not first:
            return  # only whitespace so far: the next chunk decides
        if first == b"{":
            self._body = []
            self._body_size = 0
            self._keep(chunk)
        else:
            self._body_size = 0
            self._events = EventTap(self._on_event)
            self._events(chunk)

    def _keep(self, chunk: Any) -> None:
        self._body_size += chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)
        if self._body is not None and self._body_size <= self._max_body:
            self._body.append(bytes(chunk))  # the client's chunk is passed on; this is our own copy
        else:
            self._body = None

    def _on_event(self, event: Event) -> None:
        self._parser.feed_event(event.data, event.event)

    def finish(self, pipe: Pipe) -> None:
        callback, self._callback = self._callback, None
        if callback is None:
            return
        if self._body is not None and pipe.state == "closed":
            self._parser.feed_body(b"".join(self._body))
        self._body = None
        reason = pipe.end_reason
        assert reason is not None
        try:
            callback(self._parser.usage, reason)
        except Exception as exc:
            report_callback_error("fastpipe: usage callback failed", exc, pipe)
