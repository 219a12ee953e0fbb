"""The chaos client: one raw-socket HTTP/1.1 exchange on 127.0.0.1 that can misbehave on cue.

It sends a request (head and body in scripted pieces, with pauses) while reading the response at the
same time, so an early response is seen as it comes. A fault cuts or stalls the exchange at a chosen
point: a reset (SO_LINGER 0, so the proxy gets an RST), a half-close, a stall, or a reader too slow for
the response. What comes back is kept raw and judged by the strict reader: complete (and then compared
byte for byte), visibly incomplete (the connection ended first), or still open at the deadline (a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from ._wire import Response, ResponseReader, StrictError

__all__ = ("ClientOutcome", "ClientPlan", "run_client")

# What a client plan does wrong (``ClientPlan.fault``).
NONE = "none"
RST_BEFORE_HEAD = "rst before head"
RST_MID_HEAD = "rst mid head"
FIN_MID_HEAD = "fin mid head"
STALL_MID_HEAD = "stall mid head"  # past the proxy's header timeout
RST_MID_BODY = "rst mid body"
STALL_MID_BODY = "stall mid body"  # past the proxy's upstream timeout
RST_MID_RESPONSE = "rst mid response"
SLOW_READ = "slow read"  # small receive buffer, small reads, pauses: flow control must hold
HALF_CLOSE = "half close after request"
FAULTS = (
    NONE,
    RST_BEFORE_HEAD,
    RST_MID_HEAD,
    FIN_MID_HEAD,
    STALL_MID_HEAD,
    RST_MID_BODY,
    STALL_MID_BODY,
    RST_MID_RESPONSE,
    SLOW_READ,
    HALF_CLOSE,
)
SELF_ABORTING = (RST_BEFORE_HEAD, RST_MID_HEAD, RST_MID_BODY, RST_MID_RESPONSE)

_LINGER_ZERO = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {1, 0}: close() sends an RST


@dataclass
class ClientPlan:
    target: bytes
    method: bytes = b"GET"
    version: bytes = b"HTTP/1.1"
    body: bytes = b""
    framing: str = "none"  # "none", "length" or "chunked"
    chunk_size: int = 4096
    pieces: tuple[int, ...] = (1 << 20,)
    delay: float = 0.0
    fault: str = NONE
    fault_at: int = 0
    stall: float = 0.0
    patience: float = 5.0  # how long the client waits for the whole response

    def head(self) -> bytes:
        lines = [b"%s %s %s" % (self.method, self.target, self.version), b"Host: chaos.test", b"User-Agent: chaos"]
        if self.framing == "length":
            lines.append(b"Content-Length: %d" % len(self.body))
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def body_wire(self) -> bytes:
        if self.framing == "length":
            return self.body
        if self.framing != "chunked":
            return b""
        size = max(1, self.chunk_size)
        pieces = [
            b"%x\r\n%s\r\n" % (len(self.body[at : at + size]), self.body[at : at + size])
            for at in range(0, len(self.body), size)
        ]
        return b"".join(pieces) + b"0\r\n\r\n"


@dataclass
class ClientOutcome:
    """What one exchange produced on the client's side."""

    received: bytes
    ending: str  # "complete", "fin", "rst", "open" (deadline passed), "self" (the client aborted on purpose)
    response: Response | None
    malformed: str | None  # why the strict reader refused what arrived
    elapsed: float


class _Exchange:
    def __init__(self, plan: ClientPlan) -> None:
        self.plan = plan
        self.buffer = bytearray()  # grows in place: a slow reader of a large body makes thousands of reads
        self.ending = "open"
        self.response: Response | None = None
        self.malformed: str | None = None
        self.aborted = False
        self.reader = ResponseReader(head_request=plan.method == b"HEAD")

    def judge(self, eof: bool) -> bool:
        """Parse what arrived; True once the exchange is over (complete or refused)."""
        try:
            found = self.reader.feed(self.buffer, eof=eof)
        except StrictError as exc:
            self.malformed = str(exc)
            return True
        if found is not None:
            self.response = found[0]
            return True
        return False


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    writer.transport.abort()


async def _send(exchange: _Exchange, writer: asyncio.StreamWriter) -> None:
    plan = exchange.plan
    head = plan.head()
    body = plan.body_wire()
    fault = plan.fault
    if fault == RST_BEFORE_HEAD:
        exchange.aborted = True
        _reset(writer)
        return
    if fault in (RST_MID_HEAD, FIN_MID_HEAD, STALL_MID_HEAD):
        cut = 1 + plan.fault_at % (len(head) - 2)  # at least one byte, never the whole head
        await _write(writer, head[:cut], plan)
        if fault == RST_MID_HEAD:
            exchange.aborted = True
            _reset(writer)
        elif fault == FIN_MID_HEAD:
            writer.write_eof()
        else:
            await asyncio.sleep(plan.stall)
            await _write(writer, head[cut:] + body, plan)
        return
    if fault in (RST_MID_BODY, STALL_MID_BODY) and body:
        cut = plan.fault_at % len(body)
        await _write(writer, head + body[:cut], plan)
        if fault == RST_MID_BODY:
            exchange.aborted = True
            _reset(writer)
            return
        await asyncio.sleep(plan.stall)
        await _write(writer, body[cut:], plan)
        return
    await _write(writer, head + body, plan)
    if fault == HALF_CLOSE:
        writer.write_eof()


async def _write(writer: asyncio.StreamWriter, data: bytes, plan: ClientPlan) -> None:
    pieces = plan.pieces
    position = 0
    index = 0
    while position < len(data):
        size = max(1, pieces[index % len(pieces)])
        writer.write(data[position : position + size])
        position += size
        index += 1
        if plan.delay:
            await writer.drain()
            await asyncio.sleep(plan.delay)
    await writer.drain()


async def _receive(exchange: _Exchange, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    plan = exchange.plan
    slow = plan.fault == SLOW_READ
    while True:
        try:
            data = await reader.read(2048 if slow else 262144)
        except ConnectionResetError:
            exchange.ending = "rst"
            exchange.judge(eof=False)
            return
        if not data:
            exchange.ending = "fin"
            exchange.judge(eof=True)
            return
        exchange.buffer += data
        if exchange.judge(eof=False):
            exchange.ending = "complete"
            return
        if plan.fault == RST_MID_RESPONSE and len(exchange.buffer) >= plan.fault_at:
            exchange.aborted = True
            _reset(writer)
            return
        if slow:
            await asyncio.sleep(0.0005)


async def run_client(port: int, plan: ClientPlan) -> ClientOutcome:
    """Run one exchange against ``127.0.0.1:port``; never longer than ``plan.patience`` (plus the stall)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    exchange = _Exchange(plan)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if plan.fault == SLOW_READ:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), plan.patience)
    except BaseException:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(sock=sock, limit=16384 if plan.fault == SLOW_READ else 1 << 20)
    sending = asyncio.ensure_future(_send(exchange, writer))
    try:
        receiving = asyncio.ensure_future(_receive(exchange, reader, writer))
        done, _ = await asyncio.wait({receiving}, timeout=plan.patience + plan.stall)
        if not done:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
            exchange.judge(eof=False)
        elif receiving.exception() is not None:
            raise receiving.exception()  # type: ignore[misc]
    finally:
        if not sending.done():
            sending.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await sending
        if not writer.transport.is_closing():
            writer.transport.abort()
    ending = "self" if exchange.aborted else exchange.ending
    if exchange.response is not None and ending not in ("self",):
        ending = "complete"
    if exchange.response is not None and exchange.response.framing == "close" and exchange.ending == "rst":
        exchange.response = None  # a reset never ends a close-delimited body cleanly
        ending = "rst"
    received = bytes(exchange.buffer)
    return ClientOutcome(received, ending, exchange.response, exchange.malformed, loop.time() - started)
