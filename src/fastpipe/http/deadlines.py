"""Timeouts without a timer per request: one periodic sweep over the live connections.

Arming and cancelling a loop timer for every request stage costs more than the rest of a small
request's bookkeeping; instead each connection keeps one ``deadline`` (a ``time.monotonic()`` value,
0.0 for none: uvloop's ``loop.time()`` only has millisecond steps) and a sweep, running only while there
are connections, expires the ones whose time has come. The price is precision: a deadline fires up to
one sweep interval late (a quarter of the shortest timeout, at most one second).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol

from . import clock

__all__ = ("ConnectionDeadlines", "DeadlineSweep", "HasDeadline")


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
        now = clock.monotonic()
        expired = [member for member in self._members if 0.0 < member.deadline <= now]
        for member in expired:
            member.deadline = 0.0
            member.deadline_expired(now)
        if self._members and self._handle is None:
            self._handle = self._loop.call_later(self._interval, self._sweep)


class ConnectionDeadlines:
    """One client connection's deadlines, as the sweep sees it: a stage deadline (one ``kind`` at a time,
    its seconds from ``timeouts``, the table of the route being served) and a send deadline beside it,
    armed while the client takes nothing; ``deadline`` is the earlier. When one passes, the connection's
    ``on_stage_expired(kind)`` or ``on_send_expired()`` is called."""

    __slots__ = ("_on_send_expired", "_on_stage_expired", "deadline", "kind", "send", "stage", "timeouts")

    def __init__(
        self,
        timeouts: tuple[float, ...],
        on_stage_expired: Callable[[int], None],
        on_send_expired: Callable[[], None],
    ) -> None:
        self.timeouts = timeouts
        self._on_stage_expired = on_stage_expired
        self._on_send_expired = on_send_expired
        self.deadline = 0.0  # what the sweep reads
        self.kind = 0  # the stage waited for (0: none)
        self.stage = 0.0
        self.send = 0.0

    def arm(self, kind: int, now: float = 0.0) -> None:
        """Wait for stage ``kind``: its timeout from ``now`` (kind 0 waits for nothing)."""
        self.kind = kind
        stage = self.stage = (now or clock.monotonic()) + self.timeouts[kind] if kind else 0.0
        send = self.send
        self.deadline = send if send and (not stage or send < stage) else stage

    def arm_send(self, seconds: float) -> None:
        """Start the send deadline unless it runs already."""
        if not self.send:
            self.send = clock.monotonic() + seconds
            self._sync()

    def disarm_send(self) -> None:
        self.send = 0.0
        self._sync()

    def clear(self) -> None:
        self.kind = 0
        self.deadline = self.stage = self.send = 0.0

    def deadline_expired(self, now: float) -> None:
        send = self.send
        if send and send <= now:
            self.send = 0.0
            self._sync()
            self._on_send_expired()
        elif 0.0 < self.stage <= now:
            kind = self.kind
            self.kind = 0
            self.stage = 0.0
            self._sync()
            self._on_stage_expired(kind)
        else:
            self._sync()  # the sweep cleared ``deadline``; a later one may still run

    def _sync(self) -> None:
        stage = self.stage
        send = self.send
        self.deadline = send if send and (not stage or send < stage) else stage
