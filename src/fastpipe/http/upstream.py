"""The upstream side: the protocol of one keep-alive connection to the origin, and the pool of idle ones.

A connection serves one exchange at a time. It writes the request head (and body, fed by the client side),
parses the response head with httptools, then streams the body into the exchange's Pipe. Where the body's
framing is passed on unchanged (Content-Length, or chunked to an HTTP/1.1 client) the pieces fed are the
very bytes objects the socket delivered, sliced only where the message ends: the parser only tracks that
end (for chunked) and never copies the body. ``CopyingUpstreamConnection`` forwards the parser's body
copies instead; it exists to measure what zero-copy saves.

When the body's Pipe is released, the connection goes back to the pool if the response was complete and
kept alive by the upstream, the whole request had been sent, and nothing else arrived; otherwise it is
closed (a tunnel after a 101 is never pooled).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Union, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from .._backend import Pipe
from . import head_scan, joining
from . import headers as h
from .headers import CONNECTION, CONTENT_LENGTH, FORWARD, TRANSFER_ENCODING, UPGRADE
from .record import TIMEOUT, UPSTREAM_ERROR
from .tls import UpstreamTLS, forget_transport, handshake_failure
from .writes import writelines_of

if TYPE_CHECKING:
    from .exchange import BodyPipe, Exchange
    from .limits import Limits

__all__ = (
    "CopyingUpstreamConnection",
    "Reading",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamPool",
)


class Reading(IntEnum):
    """What the connection is reading; the response head decides the body's mode."""

    HEAD = 0  # (the rest of) a response head
    LENGTH = 1  # a Content-Length body, passed through
    CHUNKED = 2  # a chunked body, passed through as chunked
    EMPTY = 3  # nothing: HEAD request, 204, 304
    UNTIL_CLOSE = 4  # a body that ends when the upstream closes, passed raw to a client that learns the end so too
    ENCODE = 5  # a body that ends when the upstream closes, re-framed as chunked for an HTTP/1.1 client
    TUNNEL = 6  # after a 101: raw bytes both ways until both sides end


HEAD, LENGTH, CHUNKED, EMPTY, UNTIL_CLOSE, ENCODE, TUNNEL = Reading

_LAST_CHUNK = b"0\r\n\r\n"
# Module globals rather than headers.<name>: a typed C global each in the compiled build (upstream.pxd).
_KINDS = h.RESPONSE_KINDS
_KINDS_BY_SPELLING = h.RESPONSE_KINDS_BY_SPELLING
_SPECIALS = tuple(_KINDS)  # the names _add_field must see: all but these are forwarded as they are
_STATUS_LINES = h.STATUS_LINES
_pushed_pipe = Pipe.pushed  # one per response: looked up once
# Whether this module runs compiled, where a response head's fields are read in C from its bytes
# (head_scan.pxd) and the parser calls no Python per header. Run as Python, httptools' per-header callback
# (on_header, set on the class below) is the faster way.
_LEAN = not __file__.endswith(".py")

_SLICE_COPY_LIMIT = 16 * 1024  # below this a body slice is copied (cheap); above, it is a memoryview


logger = logging.getLogger("fastpipe")


def plain_response(data: bytes) -> tuple[int, bool] | None:
    """``(status, keep_alive)`` when ``data`` begins with a whole response head llhttp need not read at all;
    else None (see :func:`head_scan.plain_response`)."""
    return head_scan.plain_response(data)


def whole_chunks(data: bytes, start: int) -> bool:
    """Whether ``data`` from ``start`` on is whole chunks llhttp need not read (see
    :func:`head_scan.whole_chunks`)."""
    return head_scan.whole_chunks(data, start)


class UpstreamError(ConnectionError):
    """The upstream broke the exchange: reset, closed early, or sent something that is not HTTP/1.1."""


class _BadResponse(Exception):
    """Raised inside a parser callback to stop at a response the proxy must not pass on."""


class _ExtraBytes(Exception):
    """Raised inside a parser callback when bytes follow a complete response."""


class UpstreamConnection:
    """One connection to the upstream; serves one exchange at a time (an asyncio protocol by its methods:
    the compiled build makes it an extension type, which cannot derive from ``asyncio.Protocol``)."""

    __slots__ = (
        "_between_chunks",
        "_body_unwanted",
        "_content_length",
        "_desync",
        "_drop_names",
        "_exchange",
        "_head_buf",
        "_held_head",
        "_interim",
        "_interim_bytes",
        "_keep_alive",
        "_message_done",
        "_mode",
        "_parser",
        "_parts",
        "_pipe",
        "_pool",
        "_released_callback",
        "_remaining",
        "_reusable",
        "_scan",
        "_spare_fd",
        "_tls",
        "_transfer_encoding",
        "_transport",
        "_upgrade",
        "_write_paused",
        "_writelines",
        "closed",
        "got_bytes",
        "reused",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._parser = HttpResponseParser(self)
        self._transport: Any = None
        self._exchange: Exchange | None = None
        self._pipe: BodyPipe | None = None  # the body being read (the exchange's pipe, cached)
        self._mode = HEAD
        self._head_buf = b""
        self._scan = 0
        self._parts: list[bytes] = [b""]
        self._content_length = -1
        self._transfer_encoding: bytes | None = None
        self._upgrade: bytes | None = None  # the response's Upgrade value (a 101 needs it)
        self._drop_names: list[bytes] | None = None
        self._interim = False
        self._interim_bytes = 0
        self._message_done = False
        self._desync = False
        self._keep_alive = False
        self._remaining = 0
        self._reusable = False
        self._body_unwanted = False  # the upstream answered and will close: stop sending the request body
        self._between_chunks = False  # llhttp stands between two chunks of a chunked body (compiled build)
        self._spare_fd = -1  # a duplicate of the socket while a request body is written (see _salvage)
        self._tls = False
        self._writelines: Any = None  # the transport's batched write (see writes.writelines_of), looked up once
        self._held_head: bytes | None = None  # a request head waiting for its body's first piece (see begin)
        self._write_paused = False
        self._released_callback = self._body_released
        self.closed = False
        self.got_bytes = False  # any response byte for the current exchange
        self.reused = False  # taken from the pool rather than freshly connected

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._tls = transport.get_extra_info("sslcontext") is not None
        self._writelines = writelines_of(transport)
        limits = self._pool.limits
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=limits.write_high_water, low=limits.write_low_water
        )
        self._pool.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        forget_transport(self._transport)
        if exc is None and (self._mode == UNTIL_CLOSE or self._mode == ENCODE):
            self.eof_received()  # Python 3.10's TLS transport reports the peer's close_notify only here
        self._pool.forget(self)
        if self._spare_fd >= 0:
            if exc is not None and self._exchange is not None:
                self._salvage()
            else:
                self._drop_spare()
        exchange = self._exchange
        if exchange is None:
            return
        self._exchange = None
        pipe = self._pipe
        self._pipe = None
        if pipe is None:
            exchange.upstream = None
            exchange.client.upstream_lost(exchange, self)
        else:
            pipe.feed_error(exc or UpstreamError("the upstream closed the connection mid-body"))

    def eof_received(self) -> bool | None:
        pipe = self._pipe
        mode = self._mode
        if mode == TUNNEL and pipe is not None:
            exchange = self._exchange
            assert exchange is not None
            if exchange.client.tunnel_upstream_ended(exchange):
                return True  # half-closed: the client's side may still send
            self.end_tunnel()
            return None
        if pipe is not None and (mode == UNTIL_CLOSE or mode == ENCODE):
            # The one framing where a close is the clean end of the body.
            self._exchange = None
            self._pipe = None
            self._reusable = False
            if mode == ENCODE:
                pipe.feed(_LAST_CHUNK)
            pipe.feed_eof()
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        exchange = self._exchange
        if exchange is not None:
            exchange.client.upstream_write_paused()

    def resume_writing(self) -> None:
        self._write_paused = False
        exchange = self._exchange
        if exchange is not None:
            exchange.client.upstream_write_resumed()

    def data_received(self, data: bytes) -> None:
        mode = self._mode
        if mode == LENGTH:
            # The hot path of a large body: count, pass the socket's own bytes object on.
            remaining = self._remaining - len(data)
            if remaining > 0:
                self._remaining = remaining
                self._pipe.feed(data)  # type: ignore[union-attr]
                return
        elif mode == HEAD:
            self._head_piece(data)
            return
        elif mode == CHUNKED and not (self._between_chunks and whole_chunks(data, 0)):
            # The parser tracks where a chunked body ends (a failure is already reported); whole chunks
            # read from a chunk boundary leave it where it stands, so it need not read them.
            self._between_chunks = False
            if not self._feed_parser(data):
                return
        self._body_piece(data)

    # -- writing the request ---------------------------------------------------------------------------

    def begin(self, exchange: Exchange) -> None:
        """Serve ``exchange``: write its head and any body that arrived before this connection did."""
        self._exchange = exchange
        exchange.upstream = self
        self._mode = HEAD
        self._head_buf = b""
        self._scan = 0
        self._interim_bytes = 0
        self._message_done = False
        self._desync = False
        self._reusable = False
        self._body_unwanted = False
        self.got_bytes = False
        if exchange.content_length > 0 or exchange.chunked:
            self._keep_spare()
        pending = exchange.body_pending
        if pending:
            exchange.body_pending = None
            exchange.body_pending_size = 0
            pending.insert(0, exchange.head)
            self._writelines(pending)
            exchange.client.upstream_body_flushed()
        elif self._tls and (exchange.content_length > 0 or exchange.chunked):
            # Over TLS each write is a record of its own: the body's first piece, most often in the read
            # that held the head, goes out in the head's record. Held until it comes or this loop turn ends.
            self._held_head = exchange.head
            self._pool.loop.call_soon(self._send_held_head)
        else:
            self._transport.write(exchange.head)
        if self._write_paused:
            exchange.client.upstream_write_paused()

    def send(self, piece: bytes) -> None:
        """One piece of request body, already framed for this hop; dropped once the connection is
        closed (the upstream answered early, or the exchange gave up on it)."""
        if not self.closed and not self._body_unwanted:
            head = self._held_head
            if head is None:
                self._transport.write(piece)
            else:
                self._held_head = None
                self._writelines((head, piece))  # one record where they fit one

    def _send_held_head(self) -> None:
        head = self._held_head
        if head is not None:
            self._held_head = None
            if not self.closed:
                self._transport.write(head)

    def _keep_spare(self) -> None:
        """Duplicate the socket before writing a request body. An upstream that answers early (413, 401)
        and closes without reading the body makes a later body write fail; the loop then drops the
        transport without reading what the upstream had answered. The duplicate lets ``_salvage`` read
        that answer from the receive buffer, so the client gets it instead of a 502."""
        if self._pool.tls is not None:
            return  # the socket carries ciphertext: nothing to salvage from it by hand
        sock = self._transport.get_extra_info("socket")
        if sock is not None and self._spare_fd < 0:
            try:
                self._spare_fd = os.dup(sock.fileno())
            except OSError:
                self._spare_fd = -1

    def _drop_spare(self) -> None:
        fd = self._spare_fd
        if fd >= 0:
            self._spare_fd = -1
            os.close(fd)

    def _salvage(self) -> None:
        """The transport died while a request body was written: parse what is left in the receive buffer."""
        fd = self._spare_fd
        self._spare_fd = -1
        try:
            for _ in range(64):  # the buffer holds a few hundred KiB at most; a bound all the same
                try:
                    data = os.read(fd, 65536)
                except OSError:  # would block, or the reset that ended it: nothing more
                    return
                if not data:
                    return
                self.data_received(data)
                if self._exchange is None:
                    return
        finally:
            os.close(fd)

    def half_close(self) -> bool:
        transport = self._transport
        if self.closed or not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    def end_tunnel(self) -> None:
        pipe = self._pipe
        if pipe is not None:
            self._exchange = self._pipe = None
            self._mode = HEAD
            pipe.feed_eof()

    def release(self) -> None:
        """Back to the pool, unused (the exchange it was opened for is gone)."""
        self._pool.release(self)

    def pause_reading(self) -> None:
        """The client is not taking the interim responses relayed to it: stop reading more of them."""
        if not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.closed:
            self._transport.resume_reading()

    def abandon(self) -> None:
        """The exchange gave up on this connection (client gone, timeout): close it, report nothing."""
        self._exchange = None
        self.close()

    def close(self) -> None:
        self._mode = HEAD  # whatever still arrives finds no exchange and is dropped
        self._drop_spare()
        if not self.closed:
            self.closed = True
            self._pool.forget(self)
            if self._transport is not None:
                self._transport.abort()

    # -- parser callbacks (httptools) ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._message_done:
            raise _ExtraBytes
        self._parts = [b""]
        self._content_length = -1
        self._transfer_encoding = None
        self._upgrade = None
        self._drop_names = None

    def _read_head(self) -> int:
        """Collect the fields of the head llhttp just accepted, from its bytes (CRLF line ends, so never a
        guessed boundary); where it ends in the head buffer."""
        try:
            fields = head_scan.read_head(self._head_buf, self._scan, self._parts, _SPECIALS, False, False)
        except ValueError:
            raise _BadResponse("a response head llhttp accepted but the proxy cannot read") from None
        for index in range(4, len(fields), 2):
            self._add_field(fields[index], fields[index + 1])
        end: int = fields[3]  # just past the blank line
        return end

    def _head_end(self) -> int:
        """Where the head llhttp just accepted ends in the head buffer (after the empty lines llhttp skips
        before a status line; CRLF line ends, so never a guessed boundary)."""
        buf = self._head_buf
        start = self._scan
        while buf[start : start + 1] in (b"\r", b"\n"):
            start += 1
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            raise _BadResponse("response head without CRLF CRLF")
        return end + 4

    def _on_header(self, name: bytes, value: bytes) -> None:
        """httptools' per-header callback, where this module runs as Python (see _LEAN)."""
        if self._mode == HEAD:  # else a trailer field of a chunked body: passed on (zero-copy) or dropped
            self._add_field(name, value)

    def _add_field(self, name: bytes, value: bytes) -> None:
        """One field of the response head that the proxy reads (not a parser callback: the parser calls
        none per header, and a chunked body's trailer fields are passed on with its bytes, or dropped)."""
        kind = _KINDS_BY_SPELLING.get(name, -1)
        if kind < 0:  # an unusual spelling (see headers.RESPONSE_KINDS_BY_SPELLING)
            kind = _KINDS.get(name.lower(), FORWARD)
        if kind == FORWARD:
            parts = self._parts
            parts.extend((name, b": ", value, b"\r\n"))
        elif kind == CONTENT_LENGTH:
            length = head_scan.content_length(value)
            if length < 0:
                raise _BadResponse("upstream Content-Length too large")
            self._content_length = length
            parts = self._parts
            parts.extend((name, b": ", value, b"\r\n"))
        elif kind == TRANSFER_ENCODING:
            te = self._transfer_encoding
            self._transfer_encoding = value if te is None else te + b"," + value
        elif kind == UPGRADE:
            self._upgrade = value
        elif kind == CONNECTION:
            try:
                names = h.connection_tokens(value)
            except h.ConnectionNamesProtected as exc:
                raise _BadResponse(f"upstream response: {exc}") from None
            if names:
                self._drop_names = names if self._drop_names is None else self._drop_names + names

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._head_complete(parser.get_status_code(), parser.should_keep_alive())

    def _head_complete(self, status: int, keep_alive: bool) -> None:
        """A response head ended (llhttp's, or a plain one read without it): relay an interim head, open a
        tunnel, or choose how the body is read and start the client's response."""
        exchange = self._exchange
        assert exchange is not None
        if not 100 <= status <= 599:
            raise _BadResponse(f"upstream status {status} is outside 100-599")
        end = self._read_head() if _LEAN else self._head_end()
        parts = self._parts
        if self._drop_names is not None:
            parts = h.without_names(parts, self._drop_names)
        if status == 101:
            self._scan = end
            self._open_tunnel(exchange, parts)
            return
        if status < 200:
            # Interim heads count against the head limit together: an origin streaming 103s forever
            # must not grow the client's buffer (or this one) without bound.
            self._interim_bytes += end - self._scan
            if self._interim_bytes > self._pool.limits.max_header_size:
                raise _BadResponse("upstream interim (1xx) responses over the head size limit")
            self._scan = end
            self._interim = True
            if not exchange.http10:  # HTTP/1.0 clients must not see interim responses
                if self._content_length >= 0:
                    parts = h.without_names(parts, [b"content-length"])  # a 1xx has no body to frame
                parts[0] = _STATUS_LINES[status]  # 100-599, checked above
                parts.append(b"\r\n")
                exchange.client.write_interim(joining.join_parts(parts))
            return
        self._scan = end
        te = self._transfer_encoding
        close_delimited = False
        if exchange.head_only or status == 204 or status == 304:
            mode = EMPTY
        elif self._content_length >= 0:
            mode = LENGTH
            self._remaining = self._content_length
        elif te is not None:
            if te.strip().lower() != b"chunked" or exchange.http10:
                raise _BadResponse(f"unsupported response Transfer-Encoding {te!r}")
            mode = CHUNKED
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif exchange.http10:
            mode = UNTIL_CLOSE
            close_delimited = True
        else:
            mode = ENCODE
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts[0] = _STATUS_LINES[status]  # 100-599, checked above
        self._keep_alive = keep_alive
        if not self._keep_alive and mode != UNTIL_CLOSE and mode != ENCODE and not exchange.request_done:
            # RFC 9112 §9.5: a framed answer that ends the connection before the body is in says the rest
            # is not wanted; sending it on would only earn a reset that can destroy this very answer. (A
            # close-delimited answer may be waiting for the body before it ends: keep sending there.)
            self._body_unwanted = True
        exchange.upstream_status = status
        exchange.chunked_body = mode == CHUNKED or mode == ENCODE
        pipe = _pushed_pipe(exchange, producer=self._transport, on_release=self._released_callback)
        exchange.pipe = self._pipe = pipe
        self._mode = mode
        exchange.client.start_response(exchange, pipe, parts, close_delimited)

    def _open_tunnel(self, exchange: Exchange, parts: list[bytes]) -> None:
        """A 101 to an upgrade request: relay its head, then the raw bytes both ways (it is not pooled)."""
        upgrade = self._upgrade
        if exchange.upgrade is None or upgrade is None:
            raise _BadResponse("101 Switching Protocols without an upgrade request and its Upgrade header")
        parts[0] = h.status_line(101)
        parts += (b"Connection", b": ", b"upgrade", b"\r\n", b"Upgrade", b": ", upgrade, b"\r\n")
        self._keep_alive = False
        exchange.upstream_status = 101
        pipe = _pushed_pipe(exchange, producer=self._transport, on_release=self._released_callback)
        exchange.pipe = self._pipe = pipe
        self._mode = TUNNEL
        exchange.client.start_response(exchange, pipe, parts, True)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        else:
            self._message_done = True

    # -- reading the response --------------------------------------------------------------------------

    def _feed_parser(self, data: bytes) -> bool:
        """Parse ``data``; False if the exchange failed (already reported)."""
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            return True  # after a 101 the parser stops; what follows the head is the tunnel's
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _ExtraBytes):
                self._desync = True
                return True
            if isinstance(cause, _BadResponse):
                self._fail(str(cause))
                return False
            raise
        except HttpParserError as exc:
            if self._mode == TUNNEL:
                return True  # a 101 the parser did not take for an upgrade: the bytes after it are the tunnel's
            if self._message_done:
                self._desync = True  # junk after a complete response
                return True
            self._fail(f"malformed response from upstream: {exc}")
            return False
        return True

    def _head_piece(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            self.close()  # an idle pooled connection must stay silent
            return
        self.got_bytes = True
        buf = self._head_buf
        plain = plain_response(data) if _LEAN and not buf else None  # (no byte of this head went to llhttp yet)
        buf = buf + data if buf else data
        self._head_buf = buf
        if plain is not None:
            if not self._plain_head(plain[0], plain[1]):
                return
        elif not self._feed_parser(data):
            return
        if self._mode == HEAD:
            self._head_unfinished()
            return
        self._head_buf = b""
        scan = self._scan
        rest = len(buf) - scan
        if self._mode == CHUNKED:  # (what followed the head, llhttp has read: whole chunks end between two)
            self._between_chunks = _LEAN and (rest <= 0 or whole_chunks(buf, scan))
        if rest <= 0:
            piece: Any = b""
        elif rest < _SLICE_COPY_LIMIT:
            piece = buf[scan:]
        else:
            # A big first read: a view of the socket's bytes, not a copy (fresh large copies cost page faults).
            piece = memoryview(buf)[scan:]
        self._body_piece(piece)
        exchange.client.flush_head(exchange)

    def _plain_head(self, status: int, keep_alive: bool) -> bool:
        """A plain head (see head_scan.plain_response): the steps llhttp's callbacks would have taken for it,
        without llhttp, which stays between messages (so it is also done with this one); False if the
        exchange failed (already reported)."""
        try:
            self.on_message_begin()
            self._head_complete(status, keep_alive)
        except _BadResponse as exc:
            self._fail(str(exc))
            return False
        self._message_done = True
        return True

    def _head_unfinished(self) -> None:
        """A read ended inside a response head: keep only what follows the interim heads relayed so far,
        so a stream of 1xx heads costs neither memory nor a copy of everything read on every read."""
        scan = self._scan
        if scan:
            self._head_buf = self._head_buf[scan:]
            self._scan = 0
        if len(self._head_buf) > self._pool.limits.max_header_size:
            self._fail("upstream response head too large")

    def _body_piece(self, piece: Any) -> None:
        """The one dispatcher of response body bytes, by the mode the head chose (for a chunked body,
        the parser has already seen ``piece``): pass on, count, re-frame, or end the message."""
        pipe = self._pipe
        if pipe is None:
            self.close()  # nothing is being read: an idle connection must stay silent
            return
        mode = self._mode
        if mode == LENGTH:
            remaining = self._remaining - len(piece)
            if remaining > 0:
                self._remaining = remaining
                if piece:
                    pipe.feed(piece)
                return
            if remaining < 0:
                piece = piece[: self._remaining]
                self._desync = True
            if piece:
                pipe.feed(piece)
            self._complete()
        elif mode == CHUNKED:
            if not self._message_done:
                if piece:
                    pipe.feed(piece)
            elif self._desync:
                # Bytes follow the last chunk inside this piece and the parser cannot say where it ended.
                self._fail("bytes after the end of a chunked response")
            else:
                pipe.feed(piece)
                self._complete()
        elif mode == EMPTY:
            if piece:
                self._desync = True
            self._complete()
        elif not piece:
            return
        elif mode == UNTIL_CLOSE or mode == TUNNEL:
            pipe.feed(piece)
        else:  # ENCODE
            pipe.feed(b"%x\r\n" % len(piece) + piece + b"\r\n")

    def _complete(self) -> None:
        """The response message is over: let the Pipe end; its release decides the connection's fate."""
        exchange = self._exchange
        assert exchange is not None
        if not self._message_done:
            # Bodies passed through by count (and HEAD responses) left the parser mid-message.
            self._parser = HttpResponseParser(self)
        self._message_done = False
        self._reusable = self._keep_alive and not self._desync and exchange.request_done
        self._exchange = None
        self._drop_spare()
        self._mode = HEAD
        pipe = self._pipe
        self._pipe = None
        assert pipe is not None
        pipe.feed_eof()

    def _fail(self, detail: str) -> None:
        exchange = self._exchange
        pipe = self._pipe
        self._exchange = self._pipe = None
        self.close()
        if exchange is None:
            return
        if pipe is None:
            exchange.upstream = None
            exchange.client.upstream_unavailable(exchange, 502, UPSTREAM_ERROR, detail)
        else:
            pipe.feed_error(UpstreamError(detail))

    def _body_released(self, pipe: Any) -> None:
        """on_release of a response body's Pipe: pool the connection or close it."""
        if pipe.state == "closed" and self._reusable and not self.closed:
            self._reusable = False
            self._pool.release(self)
            return
        if self._pipe is pipe:
            self._exchange = self._pipe = None
        self.close()


class CopyingUpstreamConnection(UpstreamConnection):
    """Forwards httptools' ``on_body`` copies (re-framed where needed) instead of the socket's bytes."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            self.close()
            return
        self.got_bytes = True
        if self._mode == HEAD:
            buf = self._head_buf
            self._head_buf = buf + data if buf else data
        if not self._feed_parser(data):
            return
        if self._mode == HEAD:
            self._head_unfinished()
            return
        self._head_buf = b""
        if self._message_done or self._mode == EMPTY:
            # on_body gave the exact payload, so bytes after the message only cost the connection.
            if self._mode == CHUNKED:
                self._pipe.feed(_LAST_CHUNK)  # type: ignore[union-attr]
            self._complete()
        exchange.client.flush_head(exchange)

    def on_body(self, body: bytes) -> None:
        mode = self._mode
        pipe = self._pipe
        assert pipe is not None
        if mode == LENGTH or mode == UNTIL_CLOSE:
            pipe.feed(body)
        elif mode == CHUNKED or mode == ENCODE:
            pipe.feed(b"%x\r\n" % len(body) + body + b"\r\n")


if not _LEAN:
    UpstreamConnection.on_header = UpstreamConnection._on_header  # type: ignore[attr-defined]


class UpstreamPool:
    """Idle keep-alive connections to one upstream, most recently used first."""

    __slots__ = ("_all", "_connecting", "_factory", "_idle", "closing", "host", "limits", "loop", "port", "tls")

    def __init__(
        self, host: str, port: int, limits: Limits, loop: asyncio.AbstractEventLoop, tls: UpstreamTLS | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.limits = limits
        self.loop = loop
        self._factory: Union[type[UpstreamConnection], type[CopyingUpstreamConnection]] = (
            UpstreamConnection if limits.zero_copy else CopyingUpstreamConnection
        )
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()
        self._connecting: set[asyncio.Task[None]] = set()
        self.closing = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def open(self) -> int:
        return len(self._all)

    def acquire(self) -> UpstreamConnection | None:
        """An idle connection, or None (then ``connect_for``)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                connection.reused = True
                return connection
        return None

    def release(self, connection: UpstreamConnection) -> None:
        if self.closing or len(self._idle) >= self.limits.pool_size:
            connection.close()
        else:
            self._idle.append(connection)

    def opened(self, connection: UpstreamConnection) -> None:
        self._all.add(connection)
        if self.closing:
            connection.close()

    def forget(self, connection: UpstreamConnection) -> None:
        self._all.discard(connection)
        try:
            self._idle.remove(connection)
        except ValueError:
            pass

    def connect_for(self, exchange: Exchange, timeout: float) -> None:
        """Open a new connection for ``exchange`` within ``timeout`` seconds (the TLS handshake included);
        the outcome goes to its client protocol."""
        task = self.loop.create_task(self._connect(exchange, timeout))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    def _new_connection(self) -> asyncio.Protocol:
        # A protocol by its methods (see UpstreamConnection), so to the type checker too.
        return cast(asyncio.Protocol, self._factory(self))

    async def _connect(self, exchange: Exchange, timeout: float) -> None:
        client = exchange.client
        tls = self.tls
        if tls is None:
            opening = self.loop.create_connection(self._new_connection, self.host, self.port)
        else:
            # The handshake is part of connecting: connect_timeout bounds both together.
            opening = self.loop.create_connection(
                self._new_connection,
                self.host,
                self.port,
                ssl=tls.context,
                server_hostname=tls.server_hostname,
                ssl_handshake_timeout=timeout,
            )
        try:
            _, connection = await asyncio.wait_for(opening, timeout)
        except asyncio.TimeoutError:
            client.upstream_connect_failed(exchange, 504, TIMEOUT, "timed out connecting to the upstream")
            return
        except OSError as exc:
            if tls is not None and (isinstance(exc, ssl.SSLError) or exc.errno is None):
                detail = f"upstream {tls.server_hostname}:{self.port}: {handshake_failure(exc)}"
                logger.warning("%s", detail)
            else:
                detail = f"cannot connect to the upstream: {exc.strerror or exc}"
            client.upstream_connect_failed(exchange, 502, UPSTREAM_ERROR, detail)
            return
        client.upstream_ready(exchange, connection)

    def close(self) -> None:
        """Close every connection and stop connecting; for shutdown."""
        self.closing = True
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self._all):
            connection.close()
        self._idle.clear()
