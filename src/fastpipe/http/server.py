"""The client-facing protocol: parse requests, hand each to an upstream connection, serve the response Pipe.

One ``ProxyProtocol`` per client connection: the connection's state machine, top to bottom. Its hot path
has no coroutine and no task: the request head is collected by a :class:`RequestHead` (from its bytes, once
llhttp accepted them, or inside httptools' per-header callbacks: see ``_feed``) and written to a pooled
upstream connection; the response body arrives through a pushed Pipe
whose sink is this protocol (``write`` per chunk, ``end`` once). Flow control both ways: the client
transport's ``pause_writing``/``resume_writing`` pause and resume the Pipe's producer (the upstream
transport), and the upstream's write buffer pauses reading from the client (through the :class:`ReadGate`)
while a request body streams. Pipelined requests queue behind the one in flight and are answered in order,
each once the client has taken the previous response. Deadlines (:class:`ConnectionDeadlines`): one stage
deadline (``deadlines.arm(kind)``) and, beside it, a send deadline while the client is not taking what is
written; the proxy's sweep reads the earlier.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import struct
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Protocol

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from ..end_reason import EndReason
from . import clock, head_scan, joining
from . import headers as h
from .deadlines import ConnectionDeadlines
from .exchange import BodyPipe, Exchange
from .hooks import Headers, Request, Response, head_from_request, headers_of, response_bytes
from .read_gate import BUFFERED, QUEUED, UPGRADING, UPSTREAM_FULL, ReadGate
from .record import CLIENT_GONE, COMPLETE, DRAINED, REJECTED, SHUTDOWN, TIMEOUT, UPGRADED, UPSTREAM_ERROR
from .request_head import BadRequest, RequestHead
from .routing import IDEMPOTENT, retry_link
from .stages import BODY as _BODY
from .stages import HEADER as _HEADER
from .stages import IDLE as _IDLE
from .stages import LINGER as _LINGER
from .stages import LINGER_SECONDS, stage_timeouts
from .stages import NO_DEADLINE as _NO_DEADLINE
from .stages import TUNNEL as _TUNNEL
from .stages import UPSTREAM as _UPSTREAM
from .tls import forget_transport
from .tunnel import Tunnel
from .writes import writelines_of

if TYPE_CHECKING:
    from .limits import Limits
    from .routing import ProxyRoute, Routing
    from .upstream import UpstreamConnection

__all__ = ("LINGER_SECONDS", "ProxyProtocol")


logger = logging.getLogger("fastpipe")

_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER {on, 0 s}: close() sends a reset


class ProxyContext(Protocol):
    """What the client connections of one proxy share; :class:`~fastpipe.http.proxy.Proxy` is the one."""

    @property
    def limits(self) -> Limits: ...
    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def routing(self) -> Routing: ...
    @property
    def draining(self) -> bool: ...
    @property
    def recording(self) -> bool:
        """Whether finished exchanges are recorded (a hook, the access log or metrics want them)."""

    @property
    def health_path(self) -> bytes | None: ...
    @property
    def on_request(self) -> Callable[[Request], Any] | None: ...
    @property
    def observes_responses(self) -> bool:
        """Whether ``observe_response`` must see response heads (an on_response hook)."""

    def register(self, connection: ProxyProtocol) -> None: ...
    def unregister(self, connection: ProxyProtocol) -> None: ...
    def record(self, exchange: Exchange, reason: str, now: float, client: str, pipe: Any) -> None: ...
    def observe_response(self, exchange: Exchange, pipe: BodyPipe, parts: list[bytes], peer: str) -> None:
        """The route's usage capture and the on_response hook, before the first byte goes out."""

    def server_failed(self, link: Any) -> None:
        """The server of ``link`` (a routing.ServerLink) failed an attempt before a response head."""

    def tunnel_changed(self, opened: bool) -> None: ...


class _ParserCallbacks:
    """The callbacks httptools calls: the protocol's for the message's stages and, for the full parser, the
    head's own methods for the URL and each header (no delegation on the per-header path). The lean parser
    has none of those two, and httptools then asks llhttp for no per-header callback at all."""

    __slots__ = ("on_body", "on_header", "on_headers_complete", "on_message_begin", "on_message_complete", "on_url")

    def __init__(self, protocol: ProxyProtocol, head: RequestHead | None) -> None:
        self.on_message_begin = protocol.on_message_begin
        if head is not None:
            self.on_url = head.add_url
            self.on_header = head.add_header
        self.on_headers_complete = protocol.on_headers_complete
        self.on_body = protocol.on_body
        self.on_message_complete = protocol.on_message_complete


# Whether this module runs compiled, where the lean parser pays off: the fields of its heads are read in C
# (head_scan.pxd). Run as Python, reading them is slower than httptools' per-header callbacks, so every
# message goes to the full parser.
_LEAN = not __file__.endswith(".py")


class _StopParsing(Exception):
    """Raised in a parser callback after a request that ends the connection: read nothing after it."""


class ProxyProtocol:
    """The protocol of one client connection of a reverse proxy (an asyncio protocol by its methods: the
    compiled build makes it an extension type, which cannot derive from ``asyncio.Protocol``).

    Made by a :class:`~fastpipe.http.proxy.Proxy`, which holds what connections share (limits, the upstream
    pool, the deadline sweep) and is the protocol factory. To serve it yourself::

        factory = Proxy("http://127.0.0.1:8000", limits=Limits(max_body_size=10_000_000))
        server = await loop.create_server(factory, "127.0.0.1", 8080)
    """

    __slots__ = (
        "_active",
        "_deferred_reject",
        "_drain_left",
        "_drain_timer",
        "_draining",
        "_fed_at",
        "_field_runs",
        "_forwarding",
        "_full",
        "_gate",
        "_head",
        "_head_began",
        "_head_bytes",
        "_health_path",
        "_in_head",
        "_lean",
        "_limits",
        "_line_read",
        "_lingering",
        "_loop",
        "_lost",
        "_max_body",
        "_message_ended",
        "_observes_responses",
        "_on_request",
        "_only_route",
        "_parser",
        "_parsing",
        "_peer",
        "_pending_head",
        "_pipe",
        "_plain_body",
        "_proxy",
        "_queue",
        "_read",
        "_recording",
        "_routing",
        "_transport",
        "_tunnel",
        "_upgrade_held",
        "_upgrading",
        "_write",
        "_write_paused",
        "_writelines",
        "deadlines",
    )

    def __init__(self, proxy: ProxyContext) -> None:
        self._proxy = proxy
        self._limits: Limits = proxy.limits
        self._max_body = proxy.limits.max_body_size
        self._loop = proxy.loop
        self._head = RequestHead(proxy.limits)
        # Two parsers, each only ever given whole messages (see _feed): the lean one, without per-header
        # callbacks, and the full one, made the first time a head is not for the lean one (at once, and the
        # only one, where this module runs as Python). _parser is the one parsing the current message.
        self._parser = HttpRequestParser(_ParserCallbacks(self, None if _LEAN else self._head))
        self._lean = self._parser if _LEAN else None
        self._full = None if _LEAN else self._parser
        self._fed_at = 0  # where in the read the bytes last given to a parser begin
        self._transport: Any = None
        self._write: Any = None  # the transport's write and batched write, looked up once (per body chunk)
        self._writelines: Any = None
        self._peer = "-"
        self._forwarding = h.Forwarding(b"-", b"http")
        self._routing = proxy.routing
        # fixed for the proxy's life, read per request
        self._recording = proxy.recording
        self._on_request = proxy.on_request
        self._observes_responses = proxy.observes_responses
        self._only_route = proxy.routing.only
        # a plain head's forwarded fields may go upstream as the runs of lines they came in: nothing reads
        # them by name (no on_request hook, no route that sets request headers)
        self._field_runs = self._on_request is None and not proxy.routing.sets_request_headers
        self._health_path = proxy.health_path
        self._parsing: Exchange | None = None  # the request being parsed
        self._plain_body = False  # its head was plain: its body bypasses llhttp too (see _lean_body)
        # The read being parsed, while a request may begin at its first byte; then the read the request
        # being parsed began at the start of (for _request_version)
        self._read: bytes | None = None
        self._line_read: bytes | None = None
        self._active: Exchange | None = None  # the exchange being answered
        self._queue: deque[Exchange] | None = None  # parsed, waiting behind the active one
        self._pipe: Any = None  # the active response body
        self._pending_head: bytes | None = None  # response head not yet written (goes with the first chunk)
        self._write_paused = False
        self._gate = ReadGate()
        # upgrades: the exchange that asked to switch protocols, what the client sent after that request,
        # and once the upstream said 101 the connection carrying the tunnel and how far each side got
        self._upgrading: Exchange | None = None
        self._upgrade_held = b""
        self._tunnel: Tunnel | None = None
        self._lost = False
        self._draining = False  # the client left; a usage route reads the upstream on (see _drain)
        self._drain_left = 0
        self._drain_timer: asyncio.TimerHandle | None = None
        self._deferred_reject: tuple[int, str] | None = None
        self._in_head = False
        self._head_began = False
        self._message_ended = False
        self._lingering = False
        self._head_bytes = 0
        # seconds per deadline kind, indexed by kind; the route of each exchange brings its own
        self.deadlines = ConnectionDeadlines(stage_timeouts(self._limits), self._stage_expired, self._send_expired)

    def __repr__(self) -> str:
        return f"<ProxyProtocol peer={self._peer} active={self._active!r}>"

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._gate.attach(transport)
        self._write = transport.write  # type: ignore[attr-defined]
        self._writelines = writelines_of(transport)
        limits = self._limits
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=limits.write_high_water, low=limits.write_low_water
        )
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else str(peer or "-")
        proto = b"http" if transport.get_extra_info("sslcontext") is None else b"https"
        self._forwarding = h.Forwarding(self._peer.encode("ascii", "replace"), proto)
        self.deadlines.arm(_HEADER)
        self._proxy.register(self)
        if self._proxy.draining:
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        forget_transport(self._transport)
        self._gate.detach()
        self.deadlines.clear()
        self._proxy.unregister(self)
        self._queue = None
        self._parsing = None
        pipe = self._pipe
        if pipe is not None:
            policy = pipe.on_disconnect
            if policy.drains and self._tunnel is None:
                self._drain(pipe, policy.max_bytes, policy.timeout)
                return
            pipe.cancel()  # releases the owner (the upstream connection closes) and calls self.end
            return
        exchange = self._active
        if exchange is not None:
            task = exchange.hook_task
            if task is not None:
                task.cancel()
            route = exchange.route
            if route is not None and route.drain is not None and exchange.upstream is not None:
                # A usage route whose response head has not come yet: wait for it and read it on, so the
                # usage is still seen, within the route's drain bounds (a timer from now on).
                self._start_drain(route.drain.max_bytes, route.drain.timeout)
                return
            exchange.abandon_upstream()
            self._finish(exchange, exchange.end_reason or CLIENT_GONE)

    def eof_received(self) -> bool | None:
        """The client sent FIN: taken as a half-close, answer the requests it completed, then close (None
        closes at once; so does a request cut short, which the upstream must not wait on). With
        ``abort_on_client_eof`` the client is gone: reset, and connection_lost ends the exchange."""
        self._gate.mark_input_ended()
        tunnel = self._tunnel
        if tunnel is not None:
            # The client's side of a tunnel ended: pass the half-close on where the upstream can take it.
            return True if tunnel.client_half_closed(self._transport.can_write_eof()) else None
        if self._lingering or not self.busy or self._parsing is not None:
            return None
        active = self._active
        limits = self._limits if active is None or active.route is None else active.route.limits
        if limits.abort_on_client_eof:
            self._reset()
            return None
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self._arm_send()  # a client that never reads again is cut, whatever else is pending
        pipe = self._pipe
        if pipe is not None:
            pipe.pause_producing()
            return
        exchange = self._active
        if exchange is not None and exchange.upstream is not None:
            exchange.upstream.pause_reading()  # interim responses pile up: stop reading them

    def resume_writing(self) -> None:
        self._write_paused = False
        self.deadlines.disarm_send()
        pipe = self._pipe
        if pipe is not None:
            pipe.resume_producing()
            return
        exchange = self._active
        if exchange is not None:
            if exchange.upstream is not None:
                exchange.upstream.resume_reading()
        elif self._queue and not self._lost:
            # A pipelined request waited for the client to take the previous response.
            if self._proxy.draining:
                self._close()
            else:
                self._start_queued()

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.from_client(data)
            return
        if self._gate.input_ended:
            return
        switching: bytes | None = None
        self._read = None
        try:
            self._feed(data)
        except _StopParsing:  # from a plain message's steps, which no parser wraps
            return
        except BadRequest as exc:
            self._reject(exc.status, exc.detail)
            return
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _StopParsing):
                return
            if isinstance(cause, BadRequest):
                self._reject(cause.status, cause.detail)
                return
            raise
        except HttpParserUpgrade as upgrade:
            switching = data[self._fed_at + upgrade.args[0] :]  # handled below, outside this except: no chained context
        except HttpParserError as exc:
            self._reject(400, str(exc) or "malformed request")
            return
        finally:
            self._read = None  # not held past this read
        if switching is not None:
            self._upgrade_requested(switching)
            return
        if self._in_head:
            # A head still incomplete: bound what the parser may be holding for it. A piece that also
            # ended the previous message holds an unknown share of head bytes, so it is not counted.
            if not (self._head_began and self._message_ended):
                self._head_bytes += len(data)
                if self._head_bytes > self._limits.max_header_size:
                    self._reject(431, "request head too large")
        self._head_began = self._message_ended = False

    def _feed(self, data: bytes) -> None:
        """Give a read to the parsers, each message whole to one of them. A head all in this read and with no
        Transfer-Encoding goes to the lean parser alone (on_headers_complete reads it from ``_line_read``),
        then exactly its Content-Length body; a plain one (head_scan.plain_request) needs no parser at all.
        From the first head that is not lean, the rest of the read goes to the full parser, which keeps the
        connection until a read begins between messages. (A chunked body's end is known only to the parser,
        so no head after one could be found for the lean parser.)"""
        size = len(data)
        at = 0
        lean = self._lean
        exchange = self._parsing
        if lean is None or (exchange is not None and self._parser is not lean):
            self._fed_at = 0
            if exchange is None:
                self._read = data  # a request begins at its first byte (for _request_version)
            self._parser.feed_data(data)
            return
        head = self._head
        while at < size:
            if exchange is None:
                end = head.lean_end(data, at)
                if end < 0:
                    piece = data if at == 0 else data[at:]
                else:
                    piece = data if at == 0 and end == size else data[at:end]
                self._read = piece  # a request begins at its first byte (for _request_version, the lean read)
                self._fed_at = at
                if end < 0:
                    parser = self._full
                    if parser is None:
                        parser = self._full = HttpRequestParser(_ParserCallbacks(self, head))
                    self._parser = parser
                    parser.feed_data(piece)
                    return
                self._parser = lean
                plain = head.plain_request(data, at, end)
                if plain is None:
                    lean.feed_data(piece)
                else:
                    self._plain_message(plain[0], plain[1])
                at = end
                exchange = self._parsing
                if exchange is None:
                    continue
            # The rest of the lean parser's message: exactly what is left of its Content-Length body. Its
            # head must have ended where the scan ended it, or the bytes are not what they seemed.
            left = exchange.content_length - exchange.request_body_bytes
            if self._in_head or left <= 0:
                raise HttpParserError("a request head that does not end where its blank line is")
            self._fed_at = at
            if left >= size - at:
                if at < size:
                    self._lean_body(data if at == 0 else data[at:], left == size - at)
                return
            self._lean_body(data[at : at + left], True)
            at += left
            exchange = self._parsing

    # -- request parser callbacks (httptools) ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._line_read = self._read
        self._read = None  # a second request in this read begins further in
        exchange = Exchange(self)
        self._parsing = exchange
        now = clock.monotonic()
        exchange.started = now
        self._head.reset()
        self._in_head = True
        self._head_began = True
        self._head_bytes = 0
        if self._active is None:
            self.deadlines.arm(_HEADER, now)

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._head_complete(parser.get_method(), parser.should_keep_alive(), parser is self._lean, False)

    def _plain_message(self, method: bytes, keep_alive: bool) -> None:
        """A plain head (see head_scan.plain_request): the steps llhttp's callbacks would have taken for it,
        without llhttp; so too for its Content-Length body, if any (_lean_body). (A BadRequest or
        _StopParsing comes out bare: no parser wraps it.)"""
        self.on_message_begin()
        self._head_complete(method, keep_alive, True, self._field_runs)
        exchange = self._parsing
        if exchange is not None and exchange.content_length > 0:
            self._plain_body = True
        else:
            self.on_message_complete()

    def _lean_body(self, piece: bytes, last: bool) -> None:
        """Body bytes of the lean parser's message (``last``: they end it), for llhttp to count, or, after a
        plain head, taken as llhttp's callbacks would."""
        if not self._plain_body:
            lean = self._lean
            assert lean is not None
            lean.feed_data(piece)
            return
        self.on_body(piece)
        if last:
            self._plain_body = False
            self.on_message_complete()

    def _head_complete(self, method: bytes, keep_alive: bool, lean: bool, runs: bool) -> None:
        """The request's head ended: check it, route it, start or queue the exchange. A ``lean`` head is read
        here from its bytes (``_line_read``: it begins its piece), its forwarded fields as ``runs`` of lines
        where it is plain and nothing reads them by name; any other came in by callbacks."""
        exchange = self._parsing
        assert exchange is not None
        self._in_head = False
        head = self._head
        if lean:
            lean_head = self._line_read
            assert lean_head is not None
            head.read(lean_head, runs)
        http10, chunked = head.check(method, self._request_version(method, head.target))
        exchange.method = method
        exchange.target = head.target
        exchange.http10 = http10
        exchange.chunked = chunked
        exchange.content_length = head.content_length
        exchange.keep_alive = keep_alive
        exchange.head_only = method == b"HEAD"
        health = self._health_path
        if health is not None and (method == b"GET" or exchange.head_only) and head.target.split(b"?")[0] == health:
            head.parts = None  # nothing goes upstream; later fields are trailers
            self._answer_health(exchange)
        else:
            self._route(exchange, head, method, http10, chunked)
        if self._active is None:
            self._start(exchange)
            if not exchange.request_done and (exchange.content_length > 0 or exchange.chunked):
                self.deadlines.arm(_BODY)
        else:
            if self._queue is None:
                self._queue = deque()
            self._queue.append(exchange)
            self._gate.pause(QUEUED)

    def _request_version(self, method: bytes, target: bytes) -> str:
        """The version of the request whose head just ended, as the parser's ``get_http_version`` says it.
        When the request began at the start of a read, its request line is those bytes as llhttp accepted
        them (``method SP target SP HTTP/x.y CRLF``; strict, so single spaces): 1.1 and 1.0 are read from
        there, which saves the parser formatting a string per request. Anything else asks the parser."""
        data = self._line_read
        self._line_read = None
        if data is not None:
            version = head_scan.request_line_version(data, method, target)
            if version == 11:
                return "1.1"
            if version == 10:
                return "1.0"
        return self._parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        exchange = self._parsing
        assert exchange is not None
        size = len(body)
        received = exchange.request_body_bytes + size
        exchange.request_body_bytes = received
        if self._max_body is not None and received > self._max_body:
            raise BadRequest(413, f"request body over {self._max_body} bytes")
        if exchange.chunked:
            body = b"%x\r\n" % size + body + b"\r\n"
        if self.deadlines.kind == _BODY:
            self.deadlines.arm(_BODY)
        self._send_body(exchange, body)

    def on_message_complete(self) -> None:
        exchange = self._parsing
        assert exchange is not None
        self._parsing = None
        self._message_ended = True
        exchange.request_done = True
        if exchange.chunked:
            self._send_body(exchange, b"0\r\n\r\n")
        if exchange is self._active:
            if exchange.local is None:
                self._await_head(exchange)
            else:
                self._finish(exchange, COMPLETE)
        if not exchange.keep_alive:
            self._gate.end_input()
            raise _StopParsing

    # -- request side ----------------------------------------------------------------------------------

    def _route(self, exchange: Exchange, head: RequestHead, method: bytes, http10: bool, chunked: bool) -> None:
        """Choose the request's route and make the head it goes upstream with (after the on_request hook,
        when there is one); a request no route takes is answered 404 here."""
        host = head.host
        on_request = self._on_request
        route = self._only_route  # a single catch-all route needs no matching (nor a call to match)
        if route is None:
            route = self._routing.match(host or b"", head.target)
        if route is None and on_request is None:
            head.parts = None
            self._answer_no_route(exchange, host)
            return
        exchange.route = route
        max_body = self._max_body = self._limits.max_body_size if route is None else route.max_body
        if max_body is not None and head.content_length > max_body:
            raise BadRequest(413, f"request body over {max_body} bytes")
        tunnel = None if http10 else head.tunnel
        if tunnel is not None:
            exchange.upgrade = tunnel
            self._upgrading = exchange
        if route is not None and on_request is None:
            target = route.upstream_target(head.target) if route.strip_prefix else head.target
            exchange.head = head.upstream_bytes(method, http10, chunked, self._forwarding, route, target, tunnel)
            return
        items = headers_of(head.take_parts())
        if host is not None:
            items.insert(0, ("Host", host.decode("latin-1")))
        exchange.request = Request(
            method.decode("latin-1"),
            head.target.decode("latin-1"),
            Headers._trusted(items),
            self._peer,
            None if route is None else route.name,
            None if route is None else route.group.name,
            head.xff,
            host,
        )

    def _answer_health(self, exchange: Exchange) -> None:
        """The health endpoint: answered here, never upstream; 503 (and close) once draining began."""
        if self._proxy.draining:
            exchange.keep_alive = False
            status, body = 503, b"draining\n"
        else:
            status, body = 200, b"ok\n"
        self._answer_locally_with(exchange, status, body)

    def _answer_no_route(self, exchange: Exchange, host: bytes | None) -> None:
        """The 404 of a request no route takes; its body echoes the client, hence nosniff."""
        exchange.detail = "no route"
        body = self._routing.not_found_body(host or b"", exchange.target)
        self._answer_locally_with(exchange, 404, body, nosniff=True)

    def _send_body(self, exchange: Exchange, piece: bytes) -> None:
        if exchange.local is not None:
            return  # a request the proxy answers itself: its body goes nowhere
        exchange.request_bytes += len(piece)
        exchange.request_chunks += 1
        upstream = exchange.upstream
        if upstream is not None:
            upstream.send(piece)
            return
        pending = exchange.body_pending
        if pending is None:
            exchange.body_pending = [piece]
        else:
            pending.append(piece)
        exchange.body_pending_size += len(piece)
        if exchange.body_pending_size > self._limits.write_high_water:
            self._gate.pause(BUFFERED)

    def _start(self, exchange: Exchange) -> None:
        self._active = exchange
        if exchange.local is not None:
            self._answer_locally(exchange)
        elif exchange.request is not None:
            self._run_request_hook(exchange)
        else:
            self._attempt(exchange, None)

    def _answer_locally(self, exchange: Exchange) -> None:
        """Send the response the proxy made itself (health, 404, a hook's Response)."""
        exchange.client_keep_alive = exchange.keep_alive
        exchange.first_byte = clock.monotonic()
        exchange.body_pending = None  # a body that arrived before the answer goes nowhere
        if self._gate.paused_for(BUFFERED):
            self._gate.resume(BUFFERED)
        self._transport.write(exchange.local)
        if exchange.request_done:
            self._finish(exchange, COMPLETE)  # else once the request ends (on_message_complete)

    def _answer_locally_with(self, exchange: Exchange, status: int, body: bytes, nosniff: bool = False) -> None:
        exchange.status = status
        exchange.local = h.local_response(
            status,
            body,
            head_only=exchange.head_only,
            keep_alive=exchange.keep_alive,
            http10=exchange.http10,
            nosniff=nosniff,
        )

    # -- the on_request hook ---------------------------------------------------------------------------

    def _run_request_hook(self, exchange: Exchange) -> None:
        request = exchange.request
        hook = self._on_request
        assert request is not None and hook is not None
        if exchange.route is not None:
            self.deadlines.timeouts = exchange.route.timeouts  # its upstream_timeout bounds an async hook
        try:
            result = hook(request)
        except Exception as exc:
            self._request_hook_failed(exchange, "the on_request hook raised", exc)
            return
        if inspect.isawaitable(result):
            task = exchange.hook_task = asyncio.ensure_future(result)
            self.deadlines.arm(_UPSTREAM)  # the hook's time counts against the upstream timeout
            task.add_done_callback(partial(self._request_hook_done, exchange))
            return
        self._after_request_hook(exchange, result)

    def _request_hook_done(self, exchange: Exchange, task: asyncio.Future[Any]) -> None:
        exchange.hook_task = None
        if exchange is not self._active or self._lost or task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._request_hook_failed(exchange, "the on_request hook raised", error)
            return
        self._after_request_hook(exchange, task.result())

    def _after_request_hook(self, exchange: Exchange, result: object) -> None:
        request = exchange.request
        exchange.request = None
        exchange.tag = request.tag  # a hook that answered itself may have tagged the request too
        if result is None:
            try:
                routed = self._head_after_hook(exchange, request)
            except Exception as exc:
                self._request_hook_failed(exchange, "the on_request hook left the request unusable", exc)
                return
            if routed:
                self._attempt(exchange, None)
                return
            self._answer_no_route(exchange, request.client_host)
            self._answer_locally(exchange)
        elif isinstance(result, Response):
            exchange.status = result.status
            exchange.detail = "answered by the on_request hook"
            exchange.local = response_bytes(
                result, head_only=exchange.head_only, keep_alive=exchange.keep_alive, http10=exchange.http10
            )
            self._answer_locally(exchange)
        else:
            error = TypeError(f"on_request returned {result!r}; it must return None or a fastpipe.Response")
            self._request_hook_failed(exchange, "the on_request hook returned neither None nor a Response", error)

    def _head_after_hook(self, exchange: Exchange, request: Request) -> bool:
        """The head to send upstream, from the request as the hook left it (its route, group, headers);
        False if it has no route."""
        route = exchange.route = self._routing.rerouted(exchange.route, request.route, request.upstream)
        if route is None:
            return False
        exchange.head = head_from_request(
            request,
            exchange.method,
            route.upstream_target(request.checked_target()),
            http10=exchange.http10,
            chunked=exchange.chunked,
            tunnel=exchange.upgrade,
            forwarding=self._forwarding,
            destination=route,
        )
        return True

    def _request_hook_failed(self, exchange: Exchange, detail: str, error: BaseException) -> None:
        """A 500 for an on_request hook that raised (its traceback is logged) or left a bad request."""
        logger.error("fastpipe: %s for %r", detail, exchange, exc_info=error)
        exchange.request = None
        exchange.detail = detail
        self._answer_locally_with(exchange, 500, b"500 Internal Server Error: the on_request hook failed\n")
        self._answer_locally(exchange)

    # -- attempts on the upstream servers ---------------------------------------------------------------

    def _attempt(self, exchange: Exchange, link: Any) -> None:
        """Send ``exchange`` to ``link``'s server, or to the server its group chooses (None)."""
        route: ProxyRoute = exchange.route
        if link is None:
            link = route.only_link
            if link is None:
                server = route.group.choose(exchange.tried or ())
                assert server is not None  # only None when every server was tried
                link = route.links[server]
        exchange.link = link
        exchange.attempts += 1
        exchange.in_flight = True
        link.group.started(link.server)
        self.deadlines.timeouts = route.timeouts
        pool = link.pool
        connection = pool.acquire()
        if connection is None:
            self.deadlines.arm(_NO_DEADLINE)  # the connect timeout covers this stage
            pool.connect_for(exchange, route.limits.connect_timeout)
            return
        self._begin(exchange, connection)

    def _begin(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        if exchange.request_done and exchange.body_pending and exchange.link.group.retries:
            exchange.replay = list(exchange.body_pending)  # the whole body is here: it could go again
        self._await_head(exchange)
        connection.begin(exchange)

    def _end_attempt(self, exchange: Exchange) -> None:
        if exchange.in_flight:
            exchange.in_flight = False
            link = exchange.link
            link.group.finished(link.server)

    def _attempt_failed(self, exchange: Exchange, written: bool) -> bool:
        """The attempt's server failed before a response head: count it, and send the request to another
        server where the group and RFC 9110 allow (True: the retry began)."""
        link = exchange.link
        self._end_attempt(exchange)
        self._proxy.server_failed(link)
        following = retry_link(exchange, written)
        if following is None:
            return False
        self._attempt(exchange, following)
        return True

    def _await_head(self, exchange: Exchange) -> None:
        """Arm the upstream timeout, which runs from the end of the request (a long upload is not slow
        to answer) to the response head; while the body still streams, the body timeout runs instead."""
        if not exchange.request_done:
            if exchange.content_length > 0 or exchange.chunked or exchange.upgrade is not None:
                self.deadlines.arm(_BODY)
            # else the request ended with its head: on_message_complete, next in this very parse, arms
            # the upstream stage (the header stage runs until then)
        elif exchange.pipe is None:
            self.deadlines.arm(_UPSTREAM)
        else:
            self.deadlines.arm(_NO_DEADLINE)

    def _arm_send(self) -> None:
        """Start the send deadline unless it runs already: idle_timeout for the client to read again."""
        if not self._lost:
            deadlines = self.deadlines
            deadlines.arm_send(deadlines.timeouts[_TUNNEL if self._tunnel is not None else _IDLE])

    # -- called by the upstream side -------------------------------------------------------------------

    def upstream_ready(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        """A new upstream connection for ``exchange`` is open."""
        if exchange is not self._active or self._lost:
            connection.release()
            return
        self._begin(exchange, connection)

    def upstream_connect_failed(self, exchange: Exchange, status: int, reason: str, detail: str) -> None:
        """No connection to the attempt's server: nothing was written, so any request may go elsewhere."""
        if exchange is not self._active or self._lost:
            return
        if not self._attempt_failed(exchange, written=False):
            self._fail_exchange(exchange, status, reason, detail)

    def upstream_unavailable(self, exchange: Exchange, status: int, reason: str, detail: str) -> None:
        """No response head will come for ``exchange``: answer ``status`` on the proxy's behalf."""
        if exchange is self._active:
            self._fail_exchange(exchange, status, reason, detail)

    def upstream_lost(self, exchange: Exchange, connection: UpstreamConnection) -> None:
        """The upstream closed before any response head."""
        if exchange is not self._active or (self._lost and not self._draining):
            return
        if self._lost:  # draining for the usage of a client that left: nothing to retry for
            self._fail_exchange(exchange, 502, UPSTREAM_ERROR, "the upstream closed the connection without responding")
            return
        bodyless = exchange.content_length <= 0 and not exchange.chunked and exchange.request_done
        retryable = bodyless and exchange.method in IDEMPOTENT and not exchange.retried
        if connection.reused and not connection.got_bytes and retryable:
            # A pooled connection the upstream had just closed: the request most likely never reached
            # it, but it may have, so only a method that may run twice is sent again (RFC 9110 §9.2.2).
            # Not the server's failure: an idle connection it closed.
            exchange.retried = True
            self.deadlines.arm(_NO_DEADLINE)
            exchange.link.pool.connect_for(exchange, exchange.route.limits.connect_timeout)
            return
        if not self._attempt_failed(exchange, written=True):
            self._fail_exchange(exchange, 502, UPSTREAM_ERROR, "the upstream closed the connection without responding")

    def upstream_write_paused(self) -> None:
        self._gate.pause(UPSTREAM_FULL)

    def upstream_write_resumed(self) -> None:
        self._gate.resume(UPSTREAM_FULL)

    def upstream_body_flushed(self) -> None:
        self._gate.resume(BUFFERED)

    def write_interim(self, head: bytes) -> None:
        """A 1xx response (100 Continue, 103 Early Hints) goes out at once."""
        if not self._lost:
            exchange = self._active
            if exchange is not None:
                exchange.interim_sent = True
            self._transport.write(head)

    def start_response(self, exchange: Exchange, pipe: Any, parts: list[bytes], close_delimited: bool) -> None:
        """The upstream's response head arrived: finish the client's head, connect the body's Pipe."""
        switched = exchange.upstream_status == 101
        keep_alive = exchange.keep_alive and not close_delimited and not self._proxy.draining
        if switched:
            pass  # the 101 carries its own Connection: upgrade
        elif not keep_alive:
            parts.append(b"Connection: close\r\n")
        elif exchange.http10:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        exchange.client_keep_alive = keep_alive
        exchange.close_delimited = close_delimited
        exchange.status = exchange.upstream_status
        if self._recording:  # only a record reads it (its ttfb)
            exchange.first_byte = clock.monotonic()
        if self.deadlines.kind == _UPSTREAM:
            self.deadlines.arm(_NO_DEADLINE)
        server = exchange.link.server
        if server.failures or server.down_until is not None:
            exchange.link.group.succeeded(server)  # a success clears the server's failure record
        if exchange.route.usage is not None or self._observes_responses:
            self._proxy.observe_response(exchange, pipe, parts, self._peer)
        self._pending_head = None if self._draining else joining.join_parts(parts)
        self._pipe = pipe
        if self._draining:
            pipe.start_draining()  # the client left before this head: read on for the usage
        elif self._write_paused:
            pipe.pause_producing()
        pipe.connect(self)
        if exchange is self._upgrading:
            self._upgrade_answered(exchange, switched)

    # -- protocol upgrades (WebSocket) -----------------------------------------------------------------

    def _upgrade_requested(self, rest: bytes) -> None:
        """The parser stopped after a request to switch protocols; ``rest`` is what the client sent after it.
        That is the tunnel's if the upstream switches, HTTP if it does not: hold it, read nothing more."""
        if self._upgrading is None:
            # h2c, or an Upgrade dropped with HTTP/1.0: the request went on as plain HTTP, and so does this.
            if rest:
                self.data_received(rest)
            return
        self._upgrade_held = rest
        self._gate.pause(UPGRADING)

    def _upgrade_answered(self, exchange: Exchange, switched: bool) -> None:
        self._upgrading = None
        held = self._upgrade_held
        self._upgrade_held = b""
        if switched:
            upstream = exchange.upstream
            assert upstream is not None
            tunnel = self._tunnel = Tunnel(exchange, upstream)
            self._proxy.tunnel_changed(True)
            self.deadlines.arm(_TUNNEL)  # from now on no request timeout applies
            if held:
                tunnel.from_client(held)
            self._gate.resume(UPGRADING)
            return
        # Not switched: an ordinary response, and the connection goes on as HTTP.
        self._gate.resume(UPGRADING)
        if held:
            self.data_received(held)

    def tunnel_upstream_ended(self, exchange: Exchange) -> bool:
        """The upstream half-closed the tunnel: so does the client's side where it can (not over TLS)."""
        tunnel = self._tunnel
        transport = self._transport
        if tunnel is None or not tunnel.upstream_half_closed() or self._lost or not transport.can_write_eof():
            return False
        head = self._pending_head
        if head is not None:
            self._pending_head = None
            transport.write(head)
        transport.write_eof()
        return True

    def flush_head(self, exchange: Exchange) -> None:
        """Send a response head that no body chunk carried out (the head came alone)."""
        head = self._pending_head
        if head is not None and exchange is self._active:
            self._pending_head = None
            self._transport.write(head)

    # -- the Pipe's sink -------------------------------------------------------------------------------

    def write(self, chunk: Any) -> None:
        if self._draining:
            self._drained(chunk)
            return
        head = self._pending_head
        if head is None:
            self._write(chunk)
        else:
            self._pending_head = None
            self._writelines((head, chunk))

    def end(self, pipe: BodyPipe) -> None:
        exchange = self._active
        if exchange is None or exchange.pipe is not pipe:
            return
        self._pipe = None
        if self._draining:
            self._finish(exchange, DRAINED)
            return
        state = pipe.state
        if state == "closed":
            head = self._pending_head
            if head is not None:
                self._pending_head = None
                self._transport.write(head)
            self._finish(exchange, UPGRADED if self._tunnel is not None else COMPLETE)
            return
        reason = exchange.end_reason
        if reason is None:
            reason = CLIENT_GONE if state == "cancelled" else UPSTREAM_ERROR
        if self._pending_head is not None:
            # Not one byte of this response went out: the client can still get a clean 502.
            self._pending_head = None
            exchange.status = 502
            self._send_error(502, "the upstream response broke off")
        elif self._lost:
            pass
        elif exchange.close_delimited or reason == SHUTDOWN or reason == TIMEOUT:
            # A plain close would read as the end of a close-delimited body (and could wait on a
            # client that reads nothing): reset instead.
            self._reset()
        else:
            # Fewer bytes than Content-Length, or no last chunk, then the close: a visible truncation.
            self._close()
        self._finish(exchange, reason)

    # -- the client left a usage route: read the upstream on --------------------------------------------

    def _drain(self, pipe: BodyPipe, max_bytes: int, timeout: float) -> None:
        """Read the rest of the body for its taps (usage capture), within ``max_bytes`` and ``timeout``;
        then the upstream connection is pooled (a complete response) or closed."""
        self._start_drain(max_bytes, timeout)
        pipe.start_draining()
        pipe.resume_producing()  # the client's flow control no longer applies

    def _start_drain(self, max_bytes: int, timeout: float) -> None:
        """From now on the response is read and discarded (its taps still see it), within the bounds."""
        self._draining = True
        self._drain_left = max_bytes
        self._pending_head = None  # the client is gone: no head goes out
        self._drain_timer = self._loop.call_later(timeout, self._drain_timed_out)

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        pipe = self._pipe
        exchange = self._active
        if exchange is not None:
            exchange.detail = "drain cut at its time bound (usage_drain_seconds, or the policy's timeout)"
        if pipe is not None:
            pipe.cancel(EndReason.DRAIN_CUT_TIMEOUT)  # end() finishes the exchange
            return
        if exchange is not None:  # still no response head
            exchange.abandon_upstream()
            self._finish(exchange, DRAINED)

    def _drained(self, chunk: Any) -> None:
        left = self._drain_left - (chunk.nbytes if isinstance(chunk, memoryview) else len(chunk))
        self._drain_left = left
        if left < 0:
            pipe = self._pipe
            exchange = self._active
            if exchange is not None:
                exchange.detail = "drain cut at its byte bound (usage_drain_bytes, or the policy's max_bytes)"
            if pipe is not None:
                pipe.cancel(EndReason.DRAIN_CUT_BYTES)  # the taps saw this chunk; reading stops here

    # -- ending exchanges and connections --------------------------------------------------------------

    def _finish(self, exchange: Exchange, reason: str) -> None:
        self._active = None
        task = exchange.hook_task
        if task is not None:  # ended otherwise (a timeout, a shutdown) while an async hook still ran
            exchange.hook_task = None
            task.cancel()
        if self._draining:
            self._draining = False
            timer = self._drain_timer
            if timer is not None:
                self._drain_timer = None
                timer.cancel()
        if self._tunnel is not None:
            self._tunnel = None
            self._proxy.tunnel_changed(False)
        if exchange.in_flight:
            self._end_attempt(exchange)
        if self._recording:
            self._proxy.record(exchange, reason, clock.monotonic(), self._peer, exchange.pipe)
        if self._gate.paused_for(UPSTREAM_FULL):
            self._gate.resume(UPSTREAM_FULL)
        if self._lost:
            return
        if not exchange.request_done:
            self._linger()  # the client may still be sending a body nobody reads: do not reset it
            return
        if reason is not COMPLETE or not exchange.client_keep_alive or self._proxy.draining:
            self._close()
            return
        deferred = self._deferred_reject
        if deferred is not None:
            self._send_error(*deferred)
            return
        if self._queue:
            if self._write_paused:
                # The client has not taken this response yet: the next one waits (resume_writing starts
                # it), so a client that pipelines and never reads holds no more than the write marks.
                self.deadlines.arm(_NO_DEADLINE)
                return
            self._start_queued()
            return
        if self._gate.input_ended:
            self._close()  # the client half-closed: nothing more can come
            return
        self.deadlines.arm(_HEADER if self._in_head else _IDLE)

    def _start_queued(self) -> None:
        queue = self._queue
        assert queue
        following = queue.popleft()
        if not queue:
            self._gate.resume(QUEUED)
        self._start(following)

    def _fail_exchange(self, exchange: Exchange, status: int, reason: str, detail: str) -> None:
        """End an exchange that has no response yet with the proxy's own ``status``."""
        exchange.end_reason = reason
        exchange.status = status
        exchange.detail = detail
        self._send_error(status, detail)
        self._finish(exchange, reason)

    def _reject(self, status: int, detail: str) -> None:
        """Bad input: answer ``status`` (in order, after any response in flight) and close."""
        self._gate.end_input()
        rejected = self._parsing
        self._parsing = None
        self._queue = None
        active = self._active
        if rejected is not None and rejected is not active:
            rejected.status = status
            if self._recording:
                self._proxy.record(rejected, REJECTED, clock.monotonic(), self._peer, None)
        if active is None:
            self._send_error(status, detail)
        elif active is rejected:
            # Mid-body (e.g. over max_body_size): the upstream must not get the rest.
            upstream = active.upstream
            active.upstream = None
            if upstream is not None:
                upstream.abandon()
            active.end_reason = REJECTED
            pipe = self._pipe
            if pipe is not None:
                pipe.cancel()
            else:
                self._fail_exchange(active, status, REJECTED, detail)
        else:
            self._deferred_reject = (status, detail)

    def _send_error(self, status: int, detail: str) -> None:
        """Answer on the proxy's behalf and end the connection with a lingering close.

        Closing a socket that still has unread input makes the kernel send a reset, which can destroy
        the response before the client reads it; so the proxy half-closes (FIN after the response) and
        discards what the client still sends, for at most LINGER_SECONDS.
        """
        self._gate.mark_input_ended()
        transport = self._transport
        if self._lost or transport is None or transport.is_closing() or self._lingering:
            return
        transport.write(h.error_response(status, detail))
        self._linger()

    def _linger(self) -> None:
        """Half-close after the last response and discard input for a moment, then close."""
        self._gate.mark_input_ended()
        transport = self._transport
        if self._lost or transport is None or transport.is_closing() or self._lingering:
            return
        if not transport.can_write_eof():
            self._close()
            return
        try:
            transport.write_eof()
        except OSError:
            # The client is gone already (its reset arrived while it was not being read): just close.
            self._close()
            return
        self._gate.drain_input()
        self._lingering = True
        self.deadlines.arm(_LINGER)
        if transport.get_write_buffer_size():
            self._arm_send()

    def _close(self) -> None:
        self._gate.mark_input_ended()
        if self._lingering:
            return  # the linger deadline (or the client's own close) ends the connection
        self.deadlines.arm(_NO_DEADLINE)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if transport.get_write_buffer_size():
                # close() waits for the output to go out: bound that wait like any other send.
                self._arm_send()

    def _reset(self) -> None:
        """Close with a reset (SO_LINGER 0), never a FIN that a client could take for a clean end."""
        transport = self._transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            except (OSError, AttributeError):
                pass
        transport.abort()

    # -- deadlines (called by the sweep) and shutdown (by the Proxy) --------------------------------------------------

    def _send_expired(self) -> None:
        """The client took nothing for idle_timeout: reset (a graceful close would wait on it forever)."""
        transport = self._transport
        if not self._write_paused and not transport.is_closing():
            return  # it read again meanwhile
        exchange = self._active
        if exchange is not None:
            exchange.end_reason = TIMEOUT
            pipe = self._pipe
            if pipe is not None:
                pipe.cancel()  # releases the upstream; end() resets the client
                return
        self._reset()  # connection_lost ends an exchange still waiting for its response head

    def _stage_expired(self, kind: int) -> None:
        if kind == _TUNNEL:
            self._tunnel_idle()
        elif kind == _HEADER:
            if self._in_head:
                self._reject(408, "request head not received in time")
            else:
                self._close()
        elif kind == _IDLE:
            self._close()
        elif kind == _LINGER:
            self._lingering = False
            self._close()
        elif kind == _BODY:
            exchange = self._active
            if exchange is None or exchange.request_done:
                return
            exchange.end_reason = TIMEOUT
            pipe = self._pipe
            if pipe is not None:
                pipe.cancel()  # releases the upstream; end() resets the client
                return
            exchange.abandon_upstream()
            self._fail_exchange(exchange, 408, TIMEOUT, "the request body stopped arriving")
        elif kind == _UPSTREAM:
            exchange = self._active
            if exchange is None or exchange.pipe is not None:
                return
            task = exchange.hook_task
            if task is not None:
                exchange.hook_task = None
                task.cancel()
                self._fail_exchange(exchange, 504, TIMEOUT, "the on_request hook did not finish in time")
                return
            exchange.abandon_upstream()
            if not self._attempt_failed(exchange, written=True):
                self._fail_exchange(exchange, 504, TIMEOUT, "the upstream did not answer in time")

    def _tunnel_idle(self) -> None:
        """The tunnel's idle check: bytes moved either way since the last one keep it; none end it."""
        exchange = self._active
        pipe = self._pipe
        tunnel = self._tunnel
        if exchange is None or pipe is None or tunnel is None:
            return
        if not tunnel.idle(pipe.nbytes):
            self.deadlines.arm(_TUNNEL)
            return
        exchange.end_reason = TIMEOUT
        pipe.cancel()  # releases the upstream; end() resets the client

    @property
    def busy(self) -> bool:
        """An exchange is in flight (or queued)."""
        return self._active is not None or bool(self._queue)

    def drain(self) -> None:
        """Graceful shutdown began: close now if idle, else after the response in flight."""
        if not self.busy:
            self._close()

    def cut(self) -> None:
        """The shutdown grace is over: end whatever is still in flight, saying why."""
        exchange = self._active
        if exchange is not None:
            exchange.end_reason = SHUTDOWN
            pipe = self._pipe
            if pipe is not None:
                pipe.cancel()
            else:
                exchange.abandon_upstream()
                self._fail_exchange(exchange, 503, SHUTDOWN, "the proxy is shutting down")
        if self._transport is not None and not self._lost:
            self._reset()
