"""What an observer of a chunked body sees: the payload, not the chunked framing.

A chunked response body is passed through the proxy as it came (framing included: zero-copy), and a body
the upstream ends by closing is re-framed as chunked for HTTP/1.1 clients. An ``on_response`` hook's taps
and a usage capture want the content itself, so on such bodies they are wrapped in a
:class:`ChunkedPayload`, an incremental decoder that hands them slices of the payload (the chunk sizes,
extensions, CRLFs and trailers removed; a payload piece split across reads is handed on in parts).
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ("ChunkedPayload", "PayloadTaps")

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
_MAX_LINE = 4096  # a size line (with extensions) or trailer line longer than this is not HTTP: stop decoding


class ChunkedPayload:
    """Call ``observer(payload_piece)`` for the payload carried by the chunked wire bytes it is called with."""

    __slots__ = ("_left", "_line", "_observer", "_state")

    def __init__(self, observer: Callable[[Any], object]) -> None:
        self._observer = observer
        self._state = _SIZE
        self._left = 0  # payload bytes still to come in the current chunk
        self._line = b""  # an incomplete size or trailer line

    def __call__(self, wire: Any) -> None:
        data: bytes = wire if isinstance(wire, bytes) else bytes(wire)
        position = 0
        end = len(data)
        while position < end:
            state = self._state
            if state == _DATA:
                take = min(self._left, end - position)
                self._observer(data[position : position + take] if take < end else data)
                position += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
            elif state == _DONE:
                return
            else:
                newline = data.find(b"\n", position)
                if newline < 0:
                    self._line += data[position:]
                    if len(self._line) > _MAX_LINE:
                        self._state = _DONE
                    return
                line = self._line + data[position:newline]
                self._line = b""
                position = newline + 1
                self._end_of_line(line.rstrip(b"\r"))

    def _end_of_line(self, line: bytes) -> None:
        state = self._state
        if state == _DATA_END:
            self._state = _SIZE  # the CRLF after a chunk's data
        elif state == _SIZE:
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._state = _DONE  # not chunked framing after all: decode nothing more
                return
            if size:
                self._left = size
                self._state = _DATA
            else:
                self._state = _TRAILER
        elif state == _TRAILER and not line:
            self._state = _DONE


class PayloadTaps:
    """A response Pipe as a hook sees it when its body travels chunked: ``tap`` observers get the payload.

    Everything else (``on_disconnect``, ``add_done_callback``, ``state``, counters) is the Pipe's own.
    """

    __slots__ = ("_pipe",)

    def __init__(self, pipe: Any) -> None:
        object.__setattr__(self, "_pipe", pipe)

    def tap(self, observer: Callable[[Any], object]) -> PayloadTaps:
        if not callable(observer):
            raise TypeError(f"tap() needs a callable, got {type(observer).__name__}")
        self._pipe.tap(ChunkedPayload(observer))
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipe, name, value)

    def __repr__(self) -> str:
        return f"<PayloadTaps of {self._pipe!r}>"
