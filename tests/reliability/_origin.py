"""The chaos origin: a raw-socket HTTP/1.1 server on 127.0.0.1 that records everything and misbehaves on cue.

Every byte the proxy sends upstream is kept per connection and judged by the strict reader (``_wire``):
a request a strict origin would refuse is recorded as a violation, never answered. What the origin does
for a request is looked up by its target in ``plans`` (an :class:`OriginPlan`), so a test decides,
request by request, whether the origin answers well or resets, stalls, drips, lies about framing or
answers early. After an answer that leaves the connection unfit for another request (bytes after the
message, a body left unread, a broken framing) the connection is marked tainted: a request arriving on a
tainted connection is a pooled connection reused after a broken exchange, and is recorded as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from dataclasses import dataclass, field

from ._wire import ChunkedReader, RequestHead, StrictError, parse_request_head

__all__ = ("ChaosOrigin", "OriginConnection", "OriginPlan", "ReceivedRequest")

# What an origin plan does wrong (``OriginPlan.fault``).
NONE = "none"
RST_BEFORE_HEAD = "rst before head"
FIN_BEFORE_HEAD = "fin before head"
RST_MID_HEAD = "rst mid head"
FIN_MID_HEAD = "fin mid head"
RST_MID_BODY = "rst mid body"
FIN_MID_BODY = "fin mid body"
STALL_BEFORE_HEAD = "stall before head"  # past the proxy's upstream timeout
STALL_MID_BODY = "stall mid body"  # response bodies have no timeout: the client gives up first
BAD_CHUNK_SIZE = "bad chunk size"
EXTRA_AFTER_BODY = "extra bytes after body"  # a second response smuggled behind the first
BAD_STATUS_LINE = "bad status line"
HUGE_HEAD = "huge head"
EARLY_RESPONSE = "early response"  # answer before reading the request body, then close
EARLY_RESPONSE_DRAIN = "early response, then drain"  # answer first, then read the body, stay open
FAULTS = (
    NONE,
    RST_BEFORE_HEAD,
    FIN_BEFORE_HEAD,
    RST_MID_HEAD,
    FIN_MID_HEAD,
    RST_MID_BODY,
    FIN_MID_BODY,
    STALL_BEFORE_HEAD,
    STALL_MID_BODY,
    BAD_CHUNK_SIZE,
    EXTRA_AFTER_BODY,
    BAD_STATUS_LINE,
    HUGE_HEAD,
    EARLY_RESPONSE,
    EARLY_RESPONSE_DRAIN,
)

DRIPPED_HEAD = 40
BAD_CHUNK_SIZES = (b"zz\r\n", b"-1\r\n", b"1" * 20 + b"\r\n", b"0x10\r\n", b" 5\r\n", b"5\n")
SMUGGLED_TARGET = b"/smuggled"
SMUGGLED_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Smuggled: yes\r\n\r\nsmuggled!"


@dataclass
class OriginPlan:
    """How the origin answers one target.

    ``framing`` is "length", "chunked" or "close" (no length, the close ends the body); ``pieces`` are the
    sizes the wire bytes of the response are written in (cycled), each followed by ``delay`` seconds;
    ``fault_at`` is the offset (in the head or body, per fault) where the fault strikes.
    """

    status: int = 200
    body: bytes = b""
    framing: str = "length"
    chunk_sizes: tuple[int, ...] = (65536,)
    trailers: bool = False
    interim: bool = False
    pieces: tuple[int, ...] = (1 << 20,)
    delay: float = 0.0
    fault: str = NONE
    fault_at: int = 0
    stall: float = 0.0

    def body_wire(self) -> bytes:
        """The body as framed on the wire."""
        return b"".join(self.body_pieces())

    def body_pieces(self) -> list[bytes]:
        """The wire body in framing units: one per chunk (the last chunk and trailers included)."""
        if self.framing != "chunked":
            return [self.body]
        out = []
        sizes = self.chunk_sizes
        position = 0
        index = 0
        while position < len(self.body):
            size = max(1, sizes[index % len(sizes)])
            piece = self.body[position : position + size]
            extension = b";ext=x" if index % 7 == 3 else b""
            out.append(b"%x%s\r\n%s\r\n" % (len(piece), extension, piece))
            position += size
            index += 1
        out.append(b"0\r\nX-Trailer: yes\r\n\r\n" if self.trailers else b"0\r\n\r\n")
        return out

    def head(self, head_request: bool) -> bytes:
        lines = [b"HTTP/1.1 %d Chaos" % self.status, b"Server: chaos-origin", b"X-Plan: yes"]
        if self.framing == "length":
            lines.append(b"Content-Length: %d" % len(self.body))
        elif self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            if self.trailers:
                lines.append(b"Trailer: X-Trailer")
        else:
            lines.append(b"Connection: close")
        if self.fault == EARLY_RESPONSE and self.framing != "close":
            # It closes after answering, and says so: an unannounced close of a connection the proxy has
            # pooled is the keep-alive race, which no proxy can win for a request with a body.
            lines.append(b"Connection: close")
        if self.fault == HUGE_HEAD:
            lines.extend(b"X-Big-%d: %s" % (index, b"v" * 1000) for index in range(300))
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        if self.interim:
            head = b"HTTP/1.1 100 Continue\r\n\r\n" + head
        return head


@dataclass
class ReceivedRequest:
    """One request as the origin read it."""

    connection: int
    head: RequestHead
    body_complete: bool = False
    body_sha256: str | None = None
    body_size: int = 0


@dataclass
class OriginConnection:
    index: int
    received: bytearray = field(default_factory=bytearray)
    requests: list[ReceivedRequest] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    tainted_by: bytes | None = None  # the target whose exchange left this connection unfit
    reused_after_break: list[tuple[bytes, bytes]] = field(default_factory=list)  # (tainted by, next target)
    peer_closed: bool = False
    closed: bool = False


class _Closed(Exception):
    """The proxy closed (or reset) the connection."""


class ChaosOrigin:
    """Serve with ``await origin.start()``; ``origin.port`` then; ``origin.close()`` at the end."""

    def __init__(self) -> None:
        self.plans: dict[bytes, OriginPlan] = {}
        self.connections: list[OriginConnection] = []
        self.requests: dict[bytes, list[ReceivedRequest]] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> ChaosOrigin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def violations(self) -> list[str]:
        found = []
        for connection in self.connections:
            found += [f"upstream connection {connection.index}: {text}" for text in connection.violations]
            found += [
                f"upstream connection {connection.index} was reused for {target!r} after the broken exchange of "
                f"{tainted!r}"
                for tainted, target in connection.reused_after_break
            ]
        return found

    def open_tainted(self) -> list[OriginConnection]:
        """Tainted connections the proxy has not closed."""
        return [c for c in self.connections if c.tainted_by is not None and not c.peer_closed and not c.closed]

    # -- one connection --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        connection = OriginConnection(len(self.connections))
        self.connections.append(connection)
        session = _Session(self, connection, reader, writer)
        try:
            await session.run()
        except (_Closed, OSError, RuntimeError):  # uvloop raises RuntimeError on a transport closed under it
            connection.peer_closed = True
        except asyncio.CancelledError:
            pass
        finally:
            connection.closed = True
            writer.transport.abort()
            self._tasks.discard(task)


class _Session:
    """The origin's side of one connection: read requests strictly, answer each by its plan."""

    def __init__(
        self,
        origin: ChaosOrigin,
        connection: OriginConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.origin = origin
        self.connection = connection
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    async def fill(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            raise _Closed
        self.connection.received += data
        self.buffer += data

    async def run(self) -> None:
        connection = self.connection
        while True:
            while True:
                try:
                    head = parse_request_head(self.buffer)
                except StrictError as exc:
                    connection.violations.append(f"request a strict origin refuses: {exc}")
                    return
                if head is not None:
                    break
                await self.fill()
            if connection.tainted_by is not None:
                connection.reused_after_break.append((connection.tainted_by, head.target))
            if head.target == SMUGGLED_TARGET:
                connection.violations.append("a smuggled request reached the origin")
            record = ReceivedRequest(connection.index, head)
            connection.requests.append(record)
            self.origin.requests.setdefault(head.target, []).append(record)
            self.buffer = self.buffer[head.length :]
            plan = self.origin.plans.get(head.target, OriginPlan(body=b"default"))
            if not await self.answer(plan, head, record):
                return

    async def read_body(self, head: RequestHead, record: ReceivedRequest) -> bool:
        """Read the request body strictly; False (and a violation) if it is malformed."""
        try:
            if head.chunked:
                reader = ChunkedReader()
                while True:
                    consumed = reader.feed(self.buffer, 0)
                    self.buffer = self.buffer[consumed:]
                    if reader.done:
                        body = b"".join(reader.payload)
                        break
                    await self.fill()
            else:
                end = head.content_length
                while len(self.buffer) < end:
                    await self.fill()
                body = self.buffer[:end]
                self.buffer = self.buffer[end:]
        except StrictError as exc:
            self.connection.violations.append(f"request body of {head.target!r} a strict origin refuses: {exc}")
            return False
        record.body_complete = True
        record.body_size = len(body)
        record.body_sha256 = hashlib.sha256(body).hexdigest()
        return True

    def taint(self, target: bytes) -> None:
        self.connection.tainted_by = target

    async def write_head(self, head: bytes, plan: OriginPlan) -> None:
        """A dripping plan drips the first bytes of the head, then sends the rest at once: the proxy sees
        a head in single bytes, and it still arrives well within the upstream timeout."""
        if plan.delay and plan.pieces == (1,):
            await self.write(head[:DRIPPED_HEAD], plan)
            head = head[DRIPPED_HEAD:]
        self.writer.write(head)
        await self.writer.drain()

    async def write(self, data: bytes, plan: OriginPlan) -> None:
        if not data:
            return
        pieces = plan.pieces
        position = 0
        index = 0
        while position < len(data):
            size = max(1, pieces[index % len(pieces)])
            self.writer.write(data[position : position + size])
            position += size
            index += 1
            if plan.delay:
                await self.writer.drain()
                await asyncio.sleep(plan.delay)
        await self.writer.drain()

    def half_close(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.write_eof()

    def reset(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.writer.transport.abort()

    async def answer(self, plan: OriginPlan, head: RequestHead, record: ReceivedRequest) -> bool:
        """Answer one request; False when the connection is over."""
        fault = plan.fault
        target = head.target
        response_head = plan.head(head.method == b"HEAD")
        body = b"" if head.method == b"HEAD" or plan.status in (204, 304) else plan.body_wire()
        if fault in (EARLY_RESPONSE, EARLY_RESPONSE_DRAIN):
            await self.write_head(response_head, plan)
            await self.write(body, plan)
            if fault == EARLY_RESPONSE:
                self.taint(target)
                self.half_close()
                await asyncio.sleep(0.05)  # let the response leave before the close
                return False
            if not await self.read_body(head, record):
                return False
            return plan.framing != "close"
        if not await self.read_body(head, record):
            return False
        if fault == RST_BEFORE_HEAD:
            self.reset()
            return False
        if fault == FIN_BEFORE_HEAD:
            self.half_close()
            await asyncio.sleep(0.2)
            return False
        if fault == STALL_BEFORE_HEAD:
            self.taint(target)
            await asyncio.sleep(plan.stall)
            await self.write_head(response_head, plan)
            await self.write(body, plan)
            return plan.framing != "close"
        if fault == BAD_STATUS_LINE:
            self.taint(target)
            await self.write(b"HTTP/1.1 2x0 Broken\r\nContent-Length: 3\r\n\r\nbad", plan)
            await asyncio.sleep(0.2)
            return False
        if fault in (RST_MID_HEAD, FIN_MID_HEAD):
            cut = min(plan.fault_at, len(response_head) - 1)
            await self.write(response_head[:cut], plan)
            if fault == RST_MID_HEAD:
                self.reset()
            else:
                self.half_close()
                await asyncio.sleep(0.2)
            return False
        if fault == EXTRA_AFTER_BODY:
            # The tail of the message and the smuggled response leave in one write, so the proxy reads
            # them together: a proxy that pools this connection serves "smuggled!" to its next client.
            wire = response_head + body
            await self.write_head(wire[:-64], plan)
            self.taint(target)
            self.writer.write(wire[-64:] + SMUGGLED_RESPONSE)
            await self.writer.drain()
            if plan.framing == "close":
                self.half_close()
                await asyncio.sleep(0.05)
                return False
            return True
        await self.write_head(response_head, plan)
        if fault == BAD_CHUNK_SIZE and plan.framing == "chunked" and body:
            # Whole chunks, then a size line no strict reader accepts; the connection is then unusable.
            self.taint(target)
            pieces = plan.body_pieces()
            whole = plan.fault_at % len(pieces)
            await self.write(b"".join(pieces[:whole]) + BAD_CHUNK_SIZES[plan.fault_at % len(BAD_CHUNK_SIZES)], plan)
            await asyncio.sleep(plan.stall)
            return False
        if fault in (RST_MID_BODY, FIN_MID_BODY, STALL_MID_BODY) and body:
            cut = min(plan.fault_at, len(body) - 1)
            await self.write(body[:cut], plan)
            if fault == RST_MID_BODY:
                self.reset()
                return False
            if fault == FIN_MID_BODY:
                self.half_close()
                await asyncio.sleep(0.2)
                return False
            await asyncio.sleep(plan.stall)  # then the body goes on: a slow body is no broken exchange
            await self.write(body[cut:], plan)
            return plan.framing != "close"
        await self.write(body, plan)
        if plan.framing == "close":
            self.half_close()
            await asyncio.sleep(0.05)
            return False
        return True
