"""EventTap: read Server-Sent Events out of a stream while it passes, without touching the stream.

``pipe.tap(EventTap(callback))`` parses the ``text/event-stream`` body incrementally from the chunks it
observes and calls ``callback(event)`` once per complete event, following the WHATWG parsing rules:

* lines end with CRLF, LF or CR — also when a CRLF, a multi-byte character or an event is split across
  chunks; one leading byte-order mark is ignored; invalid UTF-8 becomes U+FFFD;
* ``:`` starts a comment line; ``field: value`` loses one space after the colon; a line without a colon
  is a field with an empty value; ``data`` lines join with LF; ``event`` sets the type (default
  ``message``); ``id`` (without NUL) persists across events; ``retry`` takes ASCII digits only;
* a blank line dispatches the event, unless it has no data line; an unterminated event at the end of the
  stream is discarded (it may be incomplete).

The tap decodes into its own buffers: the chunks the client gets are neither copied nor changed. An event
larger than ``max_event_size`` characters is skipped (reported once to the loop's exception handler as
``EventTooLarge``) and parsing resumes at the next event. A callback that raises is reported the same
way; parsing goes on.
"""

from __future__ import annotations

import codecs
import re
from typing import Any, Callable, NamedTuple

from ._errors import report_callback_error

__all__ = ("Event", "EventTap", "EventTooLarge")

DEFAULT_MAX_EVENT_SIZE = 1 << 20

_LINE_END = re.compile(r"\r\n|\r|\n")


class Event(NamedTuple):
    """One dispatched event: ``event`` is the type, ``id`` the last event ID, ``retry`` the last retry."""

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class EventTooLarge(Exception):
    """An event (or a line) grew past the tap's max_event_size; it was skipped."""


class EventTap:
    """A ``Pipe.tap`` observer that calls ``callback(Event)`` for every complete Server-Sent Event."""

    __slots__ = (
        "_callback",
        "_data",
        "_decoder",
        "_last_id",
        "_max_size",
        "_retry",
        "_size",
        "_skip_lf",
        "_skipping",
        "_tail",
        "_tail_size",
        "_type",
        "dispatched",
        "skipped",
    )

    def __init__(self, callback: Callable[[Event], object], *, max_event_size: int = DEFAULT_MAX_EVENT_SIZE):
        if not callable(callback):
            raise TypeError(f"EventTap needs a callable, got {type(callback).__name__}")
        if type(max_event_size) is not int or max_event_size < 1:
            raise ValueError(f"max_event_size must be an int >= 1, got {max_event_size!r}")
        self._callback = callback
        self._max_size = max_event_size
        # utf-8-sig drops one leading BOM, also when its three bytes arrive in different chunks.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._tail: list[str] = []  # the unterminated line, in pieces
        self._tail_size = 0
        self._skip_lf = False  # the last chunk ended in CR: an LF starting the next one belongs to it
        self._skipping = False  # inside an oversized event: ignore lines up to the next blank one
        self._data: list[str] = []
        self._size = 0  # characters held for the current event (data lines and the tail)
        self._type = ""
        self._last_id = ""
        self._retry: int | None = None
        self.dispatched = 0
        self.skipped = 0

    def __call__(self, chunk: Any) -> None:
        text = self._decoder.decode(chunk)
        if not text:
            return
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return
        if "\n" not in text and "\r" not in text:
            self._extend_tail(text)
            return
        if self._tail:
            self._tail.append(text)
            text = "".join(self._tail)
            self._tail.clear()
            self._size -= self._tail_size
            self._tail_size = 0
        lines = _LINE_END.split(text) if "\r" in text else text.split("\n")  # LF-only: the common case
        rest = lines.pop()
        if not rest and text[-1] == "\r":
            self._skip_lf = True
        for line in lines:
            self._line(line)
        if rest:
            self._extend_tail(rest)

    def _extend_tail(self, text: str) -> None:
        if self._skipping:
            # The content of a skipped line does not matter, only that the line is not empty.
            if not self._tail:
                self._tail.append("-")
            return
        self._tail.append(text)
        self._tail_size += len(text)
        self._size += len(text)
        if self._size > self._max_size:
            self._skip()

    def _skip(self) -> None:
        self._skipping = True
        self.skipped += 1
        self._data.clear()
        self._size = 0
        had_tail = bool(self._tail)
        self._tail.clear()
        self._tail_size = 0
        if had_tail:
            self._tail.append("-")
        error = EventTooLarge(f"a Server-Sent Event passed {self._max_size} characters; it was skipped")
        report_callback_error("fastpipe: EventTap skipped an event", error, self)

    def _line(self, line: str) -> None:
        if not line:
            if self._skipping:
                self._skipping = False
                self._type = ""
                return
            self._dispatch()
            return
        if self._skipping or line[0] == ":":
            return
        colon = line.find(":")
        if colon < 0:
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == " ":
                value = value[1:]
        if name == "data":
            self._data.append(value)
            self._size += len(value)
            if self._size > self._max_size:
                self._skip()
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)

    def _dispatch(self) -> None:
        data = self._data
        event_type = self._type
        self._type = ""
        if not data:
            return
        event = Event("\n".join(data), event_type or "message", self._last_id, self._retry)
        data.clear()
        self._size = self._tail_size
        self.dispatched += 1
        try:
            self._callback(event)
        except Exception as exc:
            report_callback_error("fastpipe: EventTap callback failed", exc, self)
