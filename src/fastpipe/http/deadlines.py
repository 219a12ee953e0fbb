"""Timeouts without a timer per request: one periodic sweep over the live connections.

Arming and cancelling a loop timer for every request stage costs more than the rest of a small
request's bookkeeping; instead each connection keeps one ``deadline`` (a ``time.monotonic()`` value,
0.0 for none: uvloop's ``loop.time()`` only has millisecond steps) and a sweep, running only while there
are connections, expires the ones whose time has come. The price is precision: a deadline fires up to
one sweep interval late (a quarter of the shortest timeout, at most one second).
"""

from __future__ import annotations

import asyncio
from time import monotonic as _now
from typing import Protocol

__all__ = ("DeadlineSweep", "HasDeadline")


class HasDeadline(Protocol):
    deadline: float

    def deadline_expired(self, now: float) -> None: ...


class DeadlineSweep:
    """Calls ``member.deadline_expired(now)`` once a member's ``deadline`` has passed."""

    __slots__ = ("_handle", "_interval", "_loop", "_members")

    def __init__(self, loop: asyncio.AbstractEventLoop, shortest_timeout: float) -> None:
        self._loop = loop
        self._interval = min(1.0, max(0.01, shortest_timeout / 4))
        self._members: set[HasDeadline] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, member: HasDeadline) -> None:
        self._members.add(member)
        if self._handle is None:
            self._handle = self._loop.call_later(self._interval, self._sweep)

    def discard(self, member: HasDeadline) -> None:
        self._members.discard(member)
        if not self._members and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self._members.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        self._handle = None
        now = _now()
        expired = [member for member in self._members if 0.0 < member.deadline <= now]
        for member in expired:
            member.deadline = 0.0
            member.deadline_expired(now)
        if self._members and self._handle is None:
            self._handle = self._loop.call_later(self._interval, self._sweep)
