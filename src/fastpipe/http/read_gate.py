"""Whether a client connection is read, and whether what it sends still counts.

Reading is paused for any of a few reasons at once and resumed only when none is left, so one reason
ending never lifts another's pause. Separately, the connection's input can end: nothing it sends after
that is parsed (after ``Connection: close``, a refused request, a FIN, or once the connection closes).
Ending the input also pauses reading, unless the input is then drained: read and dropped, for the moment a
lingering close waits, so that the client's unread bytes cannot turn the close into a reset.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ("BUFFERED", "QUEUED", "UPGRADING", "UPSTREAM_FULL", "ReadGate")

QUEUED: Final = 1  # a pipelined request waits behind the one in flight
BUFFERED: Final = 2  # request body piles up while no upstream connection is ready
UPSTREAM_FULL: Final = 4  # the upstream's write buffer is over its high-water mark
UPGRADING: Final = 16  # after a request to switch protocols, until the upstream says whether it did
_ENDED: Final = 8  # the input ended: nothing more is read


class ReadGate:
    __slots__ = ("_reasons", "_transport", "input_ended")

    def __init__(self) -> None:
        self._reasons = 0
        self._transport: Any = None  # None before connection_made and after connection_lost
        self.input_ended = False

    def attach(self, transport: Any) -> None:
        self._transport = transport

    def detach(self) -> None:
        self._transport = None

    def pause(self, reason: int) -> None:
        if not self._reasons and self._transport is not None:
            self._transport.pause_reading()
        self._reasons |= reason

    def resume(self, reason: int) -> None:
        reasons = self._reasons & ~reason
        self._reasons = reasons
        if not reasons and self._transport is not None:
            self._transport.resume_reading()

    def paused_for(self, reason: int) -> bool:
        return bool(self._reasons & reason)

    def end_input(self) -> None:
        """Parse nothing more; stop reading (a connection about to close needs nothing more either)."""
        self.input_ended = True
        self.pause(_ENDED)

    def mark_input_ended(self) -> None:
        """Parse nothing more, leaving reading as it is (the client sent FIN, or the connection closes)
        but never resumed by another reason's end."""
        self.input_ended = True
        self._reasons |= _ENDED

    def drain_input(self) -> None:
        """Read on and drop what comes: the input has ended, but unread bytes would make a close a reset."""
        self.input_ended = True
        self._reasons = 0
        if self._transport is not None:
            self._transport.resume_reading()
