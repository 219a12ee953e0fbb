"""The fuzz driver: one input → one real client connection to a proxy in front of the chaos origin, judged.

Shared by the hypothesis target (``test_fuzz_protocol.py``) and the coverage-guided one
(``tools/fuzz_proxy.py``). Each input is written to a fresh connection in the given pieces; the driver
then reads until the proxy closes. Instead of sleeping through timeouts it expires the connection's
deadline itself once nothing moves, so a run costs milliseconds, and a connection that is idle with no
deadline armed is a hang. What must hold for every input:

* nothing reaches the loop's exception handler (an exception escaping ``data_received`` lands there);
* what the client received parses strictly as complete responses, and the proxy's own error response is
  the last thing on its connection before the close;
* the connection ends: by the proxy's own decision, or when its armed deadline is expired;
* the origin never reads a request a strict parser refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from fastpipe.http import Proxy, ProxyProtocol, proxy_of, start_proxy

from .._origin import ChaosOrigin
from .._wire import Response, StrictError, parse_response

__all__ = ("CORPUS", "Driver", "FuzzFailure")

QUIET = 0.01  # seconds without a byte before the driver decides the connection waits on a timer
BOUND = 5.0  # seconds one input may take in all

CORPUS = (
    b"GET / HTTP/1.1\r\nHost: fuzz.test\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nHost: fuzz.test\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: fuzz.test\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: fuzz.test\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: fuzz.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: fuzz.test\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: fuzz.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\n"
    b"X-Forwarded-For: 10.0.0.1\r\n\r\n",
)


class FuzzFailure(AssertionError):
    """An invariant broke for one input."""


@dataclass
class Driver:
    """A proxy and its origin on the running loop; ``await driver.run(data, pieces)`` per input."""

    origin: ChaosOrigin
    server: asyncio.Server
    handler_calls: list[dict[str, Any]] = field(default_factory=list)
    inputs: int = 0

    @classmethod
    async def start(cls, **limits: Any) -> Driver:
        origin = await ChaosOrigin().start()
        options = {"header_timeout": 30.0, "idle_timeout": 30.0, "upstream_timeout": 30.0, **limits}
        server = await start_proxy(f"http://127.0.0.1:{origin.port}", port=0, **options)
        driver = cls(origin, server)
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: driver.handler_calls.append(context))
        return driver

    async def close(self) -> None:
        self.server.close()
        await proxy_of(self.server).shutdown(0.2)
        await self.server.wait_closed()
        await self.origin.close()

    @property
    def proxy(self) -> Proxy:
        return proxy_of(self.server)

    def _protocol_for(self, local_port: int) -> ProxyProtocol | None:
        for protocol in self.proxy.connections:
            transport = protocol._transport
            peer = transport.get_extra_info("peername") if transport is not None else None
            if peer is not None and peer[1] == local_port:
                return protocol
        return None

    async def run(self, data: bytes, pieces: list[int] | None = None) -> bytes:
        """Drive one input; returns what the client received; raises FuzzFailure on a broken invariant."""
        self.inputs += 1
        self.handler_calls.clear()
        violations_before = len(self.origin.violations())
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        local_port = writer.get_extra_info("sockname")[1]
        received = b""
        closed = False
        expired = 0
        try:
            await self._write(writer, data, pieces or [len(data) or 1])
            deadline = loop.time() + BOUND
            while not closed:
                if loop.time() > deadline:
                    raise FuzzFailure(f"the connection neither ended nor went quiet in {BOUND}s")
                try:
                    chunk = await asyncio.wait_for(reader.read(65536), QUIET)
                except (asyncio.TimeoutError, TimeoutError):
                    self._check_stalled_body(local_port)
                    expired += self._expire_if_waiting(local_port, loop.time())
                    if expired > 5:
                        raise FuzzFailure("expiring the connection's deadline does not end it") from None
                    continue
                except ConnectionError:
                    closed = True
                    break
                if not chunk:
                    closed = True
                    break
                received += chunk
        finally:
            writer.transport.abort()
        for _ in range(3):  # let the proxy's side of the close run, and anything it reports arrive
            await asyncio.sleep(0)
        self._judge(received, violations_before)
        return received

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def _write(self, writer: asyncio.StreamWriter, data: bytes, pieces: list[int]) -> None:
        position = 0
        index = 0
        with contextlib.suppress(ConnectionError):
            while position < len(data):
                size = max(1, pieces[index % len(pieces)])
                writer.write(data[position : position + size])
                await writer.drain()
                position += size
                index += 1

    def _check_stalled_body(self, local_port: int) -> None:
        """A request body that stopped arriving must have a timer armed, or it holds its connections forever."""
        protocol = self._protocol_for(local_port)
        if protocol is None or protocol.deadlines.deadline > 0.0:
            return
        active = protocol._active
        if active is not None and active.pipe is None and not active.request_done:
            raise FuzzFailure("a request body stopped arriving and no deadline is armed: held forever")

    def _expire_if_waiting(self, local_port: int, now: float) -> int:
        """Nothing moved for a while: if the proxy waits on a timer, make it fire now. Returns 1 if it did."""
        protocol = self._protocol_for(local_port)
        if protocol is None:
            return 0  # the proxy already let go of it; the close is on its way
        deadlines = protocol.deadlines
        if deadlines.deadline > 0.0:
            deadlines.deadline_expired(deadlines.deadline)
            return 1
        if not protocol.busy:
            raise FuzzFailure("an idle connection has no deadline armed: it would stay open forever")
        return 0  # an exchange in flight without a timer (a response streaming): it moves on by itself

    def _judge(self, received: bytes, violations_before: int) -> None:
        if self.handler_calls:
            raise FuzzFailure(f"the loop's exception handler was called: {self.handler_calls}")
        try:
            responses = _responses(received, 0)
        except StrictError as exc:
            raise FuzzFailure(f"a response a strict client refuses: {exc}: {received[:300]!r}") from None
        if responses is None:
            raise FuzzFailure(f"not a sequence of complete responses before the close: {received[:300]!r}")
        for index, response in enumerate(responses):
            if response.status >= 400 and response.values(b"server") != [b"chaos-origin"]:
                if index != len(responses) - 1:
                    raise FuzzFailure(f"a response after the proxy's own {response.status}: {received!r}")
                if response.values(b"connection") != [b"close"]:
                    raise FuzzFailure(f"the proxy's own {response.status} does not say Connection: close")
        violations = self.origin.violations()[violations_before:]
        if violations:
            raise FuzzFailure(f"the origin received what a strict parser refuses: {violations}")


def _responses(received: bytes, position: int) -> list[Response] | None:
    """``received[position:]`` read as whole responses, or None. The driver does not know which request
    was a HEAD, so each response is read both ways (with a body, and as the head alone) and the reading
    that accounts for every byte wins."""
    if position == len(received):
        return []
    error: StrictError | None = None
    for head_request in (False, True):
        try:
            found = parse_response(received[position:], eof=True, head_request=head_request)
        except StrictError as exc:
            error = error or exc
            continue
        if found is None:
            continue
        try:
            rest = _responses(received, position + found[1])
        except StrictError as exc:
            error = error or exc
            continue
        if rest is not None:
            return [found[0], *rest]
    if error is not None:
        raise error
    return None
