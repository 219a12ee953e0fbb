"""An upstream group: which server gets the next request, and which servers are out after failing.

Health follows nginx's ``max_fails``/``fail_timeout``: ``max_fails`` failures within ``fail_timeout``
seconds eject a server for ``fail_timeout`` seconds; then ordinary traffic reaches it again. Until a
success clears its record, a server back from an ejection is on probation: its next failure ejects it
again at once (nginx keeps the failure count too). ``max_fails = 0`` never ejects. Unlike nginx, which
answers "no live upstreams" (502) when every server is ejected, a group whose servers are all ejected
picks among all of them anyway: one may have recovered, and failing every request is certain to be wrong.

Pure bookkeeping: no I/O, no asyncio, time from an injected clock. The proxy reports each attempt with
``started``/``finished`` (the in-flight counts least-connections reads) and its outcome with
``succeeded``/``failed``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from .config import BALANCE_METHODS, UpstreamGroupConfig, upstream_address

if TYPE_CHECKING:
    from ..http.address import UpstreamAddress

__all__ = ("Server", "UpstreamGroup")


class Server:
    """One server of a group: its address, its load and its health record."""

    __slots__ = ("address", "down_until", "failures", "in_flight", "url")

    def __init__(self, url: str, max_fails: int) -> None:
        self.url = url  # as configured; the label in logs and metrics
        self.address: UpstreamAddress = upstream_address(url)
        self.in_flight = 0  # exchanges started and not yet finished, across every route using the group
        self.failures: deque[float] = deque(maxlen=max(max_fails, 1))  # times of the latest failures
        # None: in good standing. A time: ejected until then; once past, on probation until a success.
        self.down_until: float | None = None

    def __repr__(self) -> str:
        return f"<Server {self.url} in_flight={self.in_flight}>"


class UpstreamGroup:
    """Servers that answer the same requests; ``choose`` picks one, the other methods keep score."""

    def __init__(
        self,
        name: str,
        servers: Sequence[str],
        balance: str = "round-robin",
        max_fails: int = 1,
        fail_timeout: float = 10.0,
        retries: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not servers:
            raise ValueError(f"upstream group {name!r} has no servers")
        if balance not in BALANCE_METHODS:
            raise ValueError(f"balance must be one of {', '.join(BALANCE_METHODS)}, got {balance!r}")
        if max_fails < 0 or retries < 0 or not fail_timeout > 0:
            raise ValueError("max_fails and retries must be >= 0 and fail_timeout > 0")
        self.name = name
        self.servers: tuple[Server, ...] = tuple(Server(url, max_fails) for url in servers)
        self.balance = balance
        self.max_fails = max_fails
        self.fail_timeout = fail_timeout
        self.retries = retries  # how many other servers a failed attempt may go to (the proxy's to apply)
        self._clock = clock
        self._least_connections = balance == "least-connections"
        self._next = 0  # round-robin position: where the next search starts

    @classmethod
    def from_config(cls, config: UpstreamGroupConfig, clock: Callable[[], float] = time.monotonic) -> UpstreamGroup:
        return cls(
            config.name,
            config.servers,
            config.balance,
            config.max_fails,
            config.fail_timeout,
            config.retries,
            clock,
        )

    def __repr__(self) -> str:
        return f"<UpstreamGroup {self.name!r} {self.balance} servers={len(self.servers)}>"

    def choose(self, exclude: Collection[Server] = ()) -> Server | None:
        """The server for the next attempt, never one in ``exclude`` (those this request already tried).

        Round-robin takes the healthy servers in turn; least-connections the healthy one with the fewest
        exchanges in flight (in turn among equals). If none outside ``exclude`` is healthy, the same
        choice among all of them. None only when ``exclude`` holds every server.
        """
        now = self._clock()
        servers = self.servers
        count = len(servers)
        for healthy_only in (True, False):
            best: int | None = None
            for step in range(count):
                index = (self._next + step) % count
                server = servers[index]
                if server in exclude or (healthy_only and not self._up(server, now)):
                    continue
                if best is None or (self._least_connections and server.in_flight < servers[best].in_flight):
                    best = index
                    if not self._least_connections:
                        break
            if best is not None:
                self._next = (best + 1) % count
                return servers[best]
        return None

    def started(self, server: Server) -> None:
        """An exchange began on ``server``."""
        server.in_flight += 1

    def finished(self, server: Server) -> None:
        """An exchange on ``server`` ended, however it ended (a long SSE stream counts until here)."""
        if server.in_flight > 0:
            server.in_flight -= 1

    def failed(self, server: Server) -> None:
        """An attempt on ``server`` failed before a response head (refused, reset, connect or TLS failure,
        timeout): count it, and eject the server at ``max_fails`` failures within ``fail_timeout``."""
        if self.max_fails == 0:
            return
        now = self._clock()
        if server.down_until is not None:  # ejected, or on probation since its last ejection
            server.down_until = now + self.fail_timeout
            return
        failures = server.failures
        failures.append(now)
        if len(failures) == self.max_fails and now - failures[0] <= self.fail_timeout:
            server.down_until = now + self.fail_timeout
            failures.clear()

    def succeeded(self, server: Server) -> None:
        """An attempt on ``server`` got a response head: its failure record is cleared."""
        server.failures.clear()
        server.down_until = None

    def is_up(self, server: Server) -> bool:
        """Whether ``server`` takes new requests now (the ``fastpipe_upstream_up`` gauge)."""
        return self._up(server, self._clock())

    @staticmethod
    def _up(server: Server, now: float) -> bool:
        down_until = server.down_until
        return down_until is None or now >= down_until
