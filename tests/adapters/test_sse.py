"""EventTap: incremental Server-Sent Events parsing, checked against a whole-body reference parser.

The reference below is written separately from the tap, character by character after the WHATWG
"event stream interpretation" steps; hypothesis builds streams (every line ending, comments, multi-line
data, BOMs, non-ASCII text) and cuts them into random chunks, and the tap must find the same events.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any, AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpipe.sse import Event, EventTap

from ..pipe._support import loop_errors
from ._support import sse_body

# -- the reference: a whole body at once -------------------------------------------------------------------


def reference_events(body: bytes) -> list[Event]:
    text = body.decode("utf-8", "replace")
    if text[:1] == "\ufeff":
        text = text[1:]
    lines: list[str] = []
    current: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "\r" or char == "\n":
            lines.append("".join(current))
            current = []
            if char == "\r" and text[position + 1 : position + 2] == "\n":
                position += 1
        else:
            current.append(char)
        position += 1
    # `current` is an unterminated line: the stream ended inside an event, which is discarded.

    events: list[Event] = []
    data_buffer = ""
    type_buffer = ""
    last_id = ""
    retry: int | None = None
    for line in lines:
        if line == "":
            if data_buffer == "":
                type_buffer = ""
                continue
            if data_buffer.endswith("\n"):
                data_buffer = data_buffer[:-1]
            events.append(Event(data_buffer, type_buffer or "message", last_id, retry))
            data_buffer = ""
            type_buffer = ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
        else:
            field, value = line, ""
        if field == "event":
            type_buffer = value
        elif field == "data":
            data_buffer += value + "\n"
        elif field == "id":
            if "\x00" not in value:
                last_id = value
        elif field == "retry":
            if value != "" and all(c in "0123456789" for c in value):
                retry = int(value)
    return events


def tapped(chunks: list[Any], **options: Any) -> list[Event]:
    events: list[Event] = []
    tap = EventTap(events.append, **options)
    for chunk in chunks:
        tap(chunk)
    return events


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(body)) for cut in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(body[start:point])
        start = point
    pieces.append(body[start:])
    return pieces


# -- the property ----------------------------------------------------------------------------------------------

value_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
field_line = st.builds(
    lambda name, space, value: f"{name}:{space}{value}",
    st.sampled_from(["data", "event", "id", "retry", "other", "dat", "data "]),
    st.sampled_from(["", " ", "  "]),
    value_text | st.sampled_from(["123", "4x", "", "\x00", "é", "0"]),
)
stream_line = st.one_of(
    field_line,
    field_line,
    st.just(""),
    st.builds(lambda text: ":" + text, value_text),
    st.sampled_from(["data", "event", "id", "retry", ":"]),
)
terminator = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(stream_line, terminator), max_size=30))
    text = "".join(line + end for line, end in lines)
    if draw(st.booleans()):
        text += draw(field_line)  # an unterminated last line
    prefix = draw(st.sampled_from(["", "\ufeff", "\ufeff\ufeff"]))
    return (prefix + text).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=event_streams(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    cut_after_cr=st.booleans(),
)
def test_any_chunking_finds_the_events_of_the_whole_body(body: bytes, cuts: list[int], cut_after_cr: bool) -> None:
    if cut_after_cr:  # the hard case, made frequent: a CRLF whose halves arrive in different chunks
        cuts = cuts + [index + 1 for index, byte in enumerate(body) if byte == 13]
    assert tapped(split(body, cuts)) == reference_events(body)


@settings(max_examples=100, deadline=None)
@given(body=event_streams())
def test_byte_by_byte_finds_the_events_of_the_whole_body(body: bytes) -> None:
    assert tapped([body[i : i + 1] for i in range(len(body))]) == reference_events(body)


@settings(max_examples=100, deadline=None)
@given(body=event_streams(), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_chunks_are_neither_copied_nor_changed(body: bytes, cuts: list[int]) -> None:
    pieces = [bytearray(piece) for piece in split(body, cuts)]
    before = [bytes(piece) for piece in pieces]
    tap = EventTap(lambda _event: None)
    for piece in pieces:
        tap(memoryview(piece))
    assert [bytes(piece) for piece in pieces] == before


# -- the rules, one example each -------------------------------------------------------------------------------


def test_an_event_split_across_chunks_is_dispatched_once_when_complete() -> None:
    events: list[Event] = []
    tap = EventTap(events.append)
    for piece in [b"da", b"ta: hel", b"lo\n", b"\n"]:
        assert events == []
        tap(piece)
    assert events == [Event("hello")]


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending(end: bytes) -> None:
    body = b"event: add" + end + b"data: 1" + end + b"data: 2" + end + end + b"data: 3" + end + end
    assert tapped([body]) == [Event("1\n2", "add"), Event("3")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    assert tapped([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [Event("a\nb")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    body = b": keep-alive\nfoo: bar\ndata: x\n: more\n\n"
    assert tapped([body]) == [Event("x")]


def test_one_leading_bom_is_ignored_even_split_but_not_a_second() -> None:
    assert tapped([b"\xef", b"\xbb", b"\xbfdata: a\n\n"]) == [Event("a")]
    assert tapped(["\ufeff\ufeffdata: a\n\n".encode()]) == []  # the second BOM is part of the field name


def test_events_without_data_are_not_dispatched_but_empty_data_is() -> None:
    assert tapped([b"event: ping\n\n", b"data\n\n", b"data:\n\n"]) == [Event(""), Event("")]


def test_id_persists_and_retry_takes_digits_only() -> None:
    body = b"id: 7\nretry: 100\ndata: a\n\nretry: 1x\ndata: b\n\nid: bad\x00\ndata: c\n\nid\ndata: d\n\n"
    assert tapped([body]) == [
        Event("a", "message", "7", 100),
        Event("b", "message", "7", 100),
        Event("c", "message", "7", 100),
        Event("d", "message", "", 100),
    ]


def test_an_unterminated_event_at_the_end_is_discarded() -> None:
    assert tapped([b"data: complete\n\ndata: cut off\n"]) == [Event("complete")]


def test_multibyte_characters_split_across_chunks() -> None:
    body = "data: héllo → 世界\n\n".encode()
    assert tapped([body[i : i + 1] for i in range(len(body))]) == [Event("héllo → 世界")]


async def test_an_oversized_event_is_skipped_and_parsing_resumes() -> None:
    events: list[Event] = []
    tap = EventTap(events.append, max_event_size=100)
    with loop_errors() as errors:
        tap(b"data: small\n\n")
        tap(b"data: " + b"x" * 60 + b"\ndata: " + b"y" * 60)
        tap(b"y" * 1000)
        tap(b"\n\ndata: after\n\n")
    assert [event.data for event in events] == ["small", "after"]
    assert tap.skipped == 1
    assert [type(context["exception"]).__name__ for context in errors] == ["EventTooLarge"]


async def test_a_failing_callback_is_reported_and_parsing_goes_on() -> None:
    seen: list[str] = []

    def callback(event: Event) -> None:
        seen.append(event.data)
        if event.data == "bad":
            raise ValueError("broken metrics hook")

    tap = EventTap(callback)
    with loop_errors() as errors:
        tap(b"data: bad\n\ndata: good\n\n")
    assert seen == ["bad", "good"]
    assert isinstance(errors[0]["exception"], ValueError)


def test_event_tap_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match="callable"):
        EventTap("not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_event_size"):
        EventTap(print, max_event_size=0)


# -- on a Pipe -------------------------------------------------------------------------------------------------


async def test_usage_event_captured_from_a_pipe_without_touching_its_chunks(impl: ModuleType) -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    body = sse_body(4, usage)
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]

    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    captured: list[dict[str, int]] = []

    def on_event(event: Event) -> None:
        if event.data != "[DONE]" and (payload := json.loads(event.data)).get("usage"):
            captured.append(payload["usage"])

    tap = EventTap(on_event)
    got = [chunk async for chunk in impl.Pipe(source()).tap(tap)]
    assert all(a is b for a, b in zip(got, pieces, strict=True))
    assert captured == [usage]
    assert tap.dispatched == 6
