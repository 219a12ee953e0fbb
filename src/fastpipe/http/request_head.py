"""The head of the request being parsed: what httptools' callbacks collect, checked, then made into the head
sent upstream.

One :class:`RequestHead` per client connection, reset for each request, so a keep-alive connection makes no
new object per request for this. Its ``add_url``/``add_header`` are the parser's own callbacks (no
delegation per header). Anything the proxy must refuse raises :class:`BadRequest` with the status to answer.
"""

from __future__ import annotations

from httptools import parse_url

from . import head_scan, joining
from . import headers as h
from .headers import CONNECTION, CONTENT_LENGTH, FORWARD, HOST, TRANSFER_ENCODING, UPGRADE, X_FORWARDED_FOR
from .limits import Limits

__all__ = ("BadRequest", "RequestHead", "upstream_request_head")

# Module globals rather than headers.<name>: a typed C global each in the compiled build (request_head.pxd).
_KINDS = h.REQUEST_KINDS
_KINDS_BY_SPELLING = h.REQUEST_KINDS_BY_SPELLING
_SPECIALS = tuple(_KINDS)  # the names add_header must see: all but these are forwarded as they are


class BadRequest(Exception):
    """Raised inside a parser callback: answer ``status`` and close the connection."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestHead:
    """The request head under construction; plain state plus the checks that need all of it."""

    __slots__ = (
        "connection_names",
        "connection_upgrade",
        "content_length",
        "count",
        "host",
        "max_header_count",
        "max_header_size",
        "parts",
        "size",
        "target",
        "transfer_encoding",
        "underscores_in_headers",
        "upgrade",
        "xff",
    )

    def __init__(self, limits: Limits) -> None:
        # what it needs of the (frozen) limits, read per header: C fields in the compiled build
        self.max_header_count = limits.max_header_count
        self.max_header_size = limits.max_header_size
        self.underscores_in_headers = limits.underscores_in_headers
        self.reset()

    def reset(self) -> None:
        self.target = b""
        # parts[0] becomes the request line; then name, ": ", value, CRLF per header; None once consumed
        self.parts: list[bytes] | None = [b""]
        self.host: bytes | None = None
        self.xff: bytes | None = None
        self.connection_names: list[bytes] | None = None
        self.transfer_encoding: bytes | None = None
        self.content_length = -1
        self.upgrade: bytes | None = None  # the Upgrade value
        self.connection_upgrade = False  # Connection listed "upgrade"
        self.size = 0
        self.count = 0

    # -- parser callbacks --------------------------------------------------------------------------------

    def add_url(self, url: bytes) -> None:
        self.target += url

    def add_header(self, name: bytes, value: bytes) -> None:
        parts = self.parts
        if parts is None:
            return  # a trailer field of a chunked body: the head is gone already, trailers are dropped
        self.size += len(name) + len(value) + 4
        self.count += 1
        if self.count > self.max_header_count:
            raise BadRequest(431, f"more than {self.max_header_count} request header fields")
        kind = _KINDS_BY_SPELLING.get(name, -1)
        if kind < 0:  # an unusual spelling: lower-cased, and checked for an underscore (never in the table)
            lowered = name.lower()
            # find, not `in`: bytes.__contains__ first tries its argument as an int and pays for a TypeError
            if lowered.find(b"_") >= 0 and _drop_underscored(lowered, self.underscores_in_headers):
                return
            kind = _KINDS.get(lowered, FORWARD)
        if kind == FORWARD:
            parts.extend((name, b": ", value, b"\r\n"))
        elif kind == HOST:
            if self.host is not None:
                raise BadRequest(400, "more than one Host header")
            self.host = value  # written upstream by upstream_request_head, after the route decided
        elif kind == CONTENT_LENGTH:
            length = head_scan.content_length(value)
            if length < 0:
                raise BadRequest(400, "Content-Length too large")
            self.content_length = length
            parts.extend((name, b": ", value, b"\r\n"))
        elif kind == X_FORWARDED_FOR:
            xff = self.xff
            self.xff = value if xff is None else xff + b", " + value
        elif kind == TRANSFER_ENCODING:
            te = self.transfer_encoding
            self.transfer_encoding = value if te is None else te + b"," + value
        elif kind == CONNECTION:
            try:
                names = h.connection_tokens(value)
            except h.ConnectionNamesProtected as exc:
                raise BadRequest(400, str(exc)) from None
            if names:
                self.connection_names = (self.connection_names or []) + names
            if h.lists_upgrade(value):
                self.connection_upgrade = True
        elif kind == UPGRADE:
            upgrade = self.upgrade
            self.upgrade = value if upgrade is None else upgrade + b", " + value
        # DROP and X_FORWARDED_SET: not forwarded

    # -- the lean parser's way in: the head read from its bytes -------------------------------------------

    def lean_end(self, data: bytes, start: int) -> int:
        """Where the next head, beginning at ``start`` of ``data``, ends if the lean parser may take it;
        else -1 (see :func:`head_scan.lean_head_end`)."""
        return head_scan.lean_head_end(data, start)

    def plain_request(self, data: bytes, start: int, end: int) -> tuple[bytes, bool] | None:
        """``(method, keep_alive)`` when the lean head from ``start`` to ``end`` of ``data`` is one llhttp
        need not read at all; else None (see :func:`head_scan.plain_request`)."""
        return head_scan.plain_request(data, start, end)

    def read(self, head: bytes, runs: bool = False) -> None:
        """Collect a whole head that llhttp accepted (or would: a plain one), as its per-header callbacks
        would have; the fields forwarded unread go onto the parts in C, only the others through
        :meth:`add_header`. With ``runs`` (a plain head no hook or route reads by name) each run of
        forwarded lines is one part, the lines as they came (see :func:`head_scan.read_head`)."""
        parts = self.parts
        assert parts is not None
        fields = head_scan.read_head(head, 0, parts, _SPECIALS, True, runs)
        self.target = fields[0]
        self.count += fields[1]
        self.size += fields[2]
        if self.count > self.max_header_count:
            raise BadRequest(431, f"more than {self.max_header_count} request header fields")
        for index in range(4, len(fields), 2):
            self.add_header(fields[index], fields[index + 1])

    # -- once the head is complete ----------------------------------------------------------------------

    def check(self, method: bytes, version: str) -> tuple[bool, bool]:
        """Refuse what the proxy does not forward; ``(http10, chunked)`` for what it does."""
        if self.size + len(self.target) > self.max_header_size:
            raise BadRequest(431, "request head too large")
        if method == b"CONNECT":
            raise BadRequest(501, "CONNECT is not supported by this proxy")
        if version == "1.1":
            http10 = False
        elif version == "1.0":
            http10 = True
        elif version == "0.9":
            raise BadRequest(400, "HTTP/0.9 requests are not supported")
        else:
            raise BadRequest(505, f"HTTP/{version} is not supported by this HTTP/1.1 proxy")
        if self.target[:1] != b"/":  # (a slice compare: startswith costs a call that parses its arguments)
            self._origin_form(method)
        chunked = False
        te = self.transfer_encoding
        if te is not None:
            if http10:
                raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
            if te.strip().lower() != b"chunked":
                raise BadRequest(501, "transfer codings other than chunked are not supported")
            chunked = True
        elif self.host is None and not http10:
            raise BadRequest(400, "HTTP/1.1 request without Host")
        return http10, chunked

    @property
    def tunnel(self) -> bytes | None:
        """The Upgrade value of a request that asks for a tunnel (Connection lists upgrade, the protocol is
        not h2c); otherwise None, and Upgrade is dropped as the hop-by-hop header it is."""
        upgrade = self.upgrade
        if upgrade is not None and self.connection_upgrade and h.tunnel_protocols(upgrade):
            return upgrade
        return None

    def _origin_form(self, method: bytes) -> None:
        """Turn an absolute-form target into the origin form the upstream expects; its authority becomes
        the Host (RFC 9112 §3.2.2). The asterisk form is only for OPTIONS; anything else is refused."""
        target = self.target
        if target == b"*":
            if method != b"OPTIONS":
                raise BadRequest(400, "the asterisk-form target is only for OPTIONS")
            return
        try:
            url = parse_url(target)
        except Exception:
            raise BadRequest(400, "malformed request target") from None
        if url.schema not in (b"http", b"https") or not url.host or url.userinfo:
            raise BadRequest(400, "the request target must be a path or an http URL")
        host = url.host
        if b":" in host:
            host = b"[" + host + b"]"  # an IPv6 literal keeps its brackets in Host (RFC 3986 §3.2.2)
        if url.port is not None:
            host += b":%d" % url.port
        self.target = (url.path or b"/") + (b"?" + url.query if url.query is not None else b"")
        self.host = host  # the client's Host gives way

    def upstream_bytes(
        self,
        method: bytes,
        http10: bool,
        chunked: bool,
        forwarding: h.Forwarding,
        route: h.Destination,
        target: bytes,
        tunnel: bytes | None = None,
    ) -> bytes:
        """The head to send upstream for ``target`` (the parts are consumed: later fields are trailers)."""
        parts = self.parts
        assert parts is not None
        self.parts = None
        return upstream_request_head(
            parts,
            method,
            target,
            self.connection_names,
            self.host,
            self.xff,
            forwarding,
            route,
            None,
            chunked,
            http10,
            tunnel,
        )

    def take_parts(self) -> list[bytes]:
        """The forwardable header parts, less those Connection named, for a hook to see (consumed)."""
        parts = self.parts
        assert parts is not None
        self.parts = None
        names = self.connection_names
        return parts if names is None else h.without_names(parts, names)


def upstream_request_head(
    parts: list[bytes],
    method: bytes,
    target: bytes,
    drop: list[bytes] | None,
    host: bytes | None,
    xff: bytes | None,
    forwarding: h.Forwarding,
    destination: h.Destination,
    forwarded_host: bytes | None,
    chunked: bool,
    http10: bool,
    tunnel: bytes | None,
) -> bytes:
    """The request head for the upstream: ``method target`` in this hop's version, the client's forwardable
    header ``parts`` (consumed; ``parts[0]`` is a placeholder, Host is not among them) less those Connection
    named (``drop``) and those the route sets, with the Host, forwarding, route and framing headers of this
    hop. X-Forwarded-Host is ``forwarded_host`` if given (the client's Host after a hook changed it), else
    ``host``."""
    set_names = destination.set_names
    if set_names is not None:
        drop = set_names if drop is None else drop + set_names
    if drop is not None:
        parts = h.without_names(parts, drop)
    # the request line as parts too: joined once with the rest, not concatenated first
    parts[0] = method
    parts[1:1] = (b" ", target, b" HTTP/1.0\r\n" if http10 else b" HTTP/1.1\r\n")
    if tunnel is not None:  # an upgrade request keeps its Connection and Upgrade (the only hop-by-hop ones)
        parts.extend((b"Connection: upgrade\r\nUpgrade: ", tunnel, b"\r\n"))
    if host is None or destination.rewrite_host:
        parts.append(destination.host_line)
    else:
        parts.extend((b"Host: ", host, b"\r\n"))
    if xff is None:
        parts.append(forwarding.plain)
    else:
        parts.extend((b"X-Forwarded-For: ", xff, b", ", forwarding.peer, b"\r\nX-Forwarded-Proto: "))
        parts.extend((forwarding.proto, b"\r\n"))
    if forwarded_host is None:
        forwarded_host = host
    if forwarded_host is not None:
        parts.extend((b"X-Forwarded-Host: ", forwarded_host, b"\r\n"))
    if set_names is not None:
        parts.append(destination.set_lines)
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if http10:
        # An HTTP/1.0 client cannot take a chunked response, so the upstream is asked in 1.0 too (the
        # documented downgrade); keep-alive is still requested to keep the pool warm.
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return joining.join_parts(parts)


def _drop_underscored(lowered: bytes, underscores_in_headers: bool) -> bool:
    """Whether a request header whose name has an underscore is dropped. CGI and WSGI fold ``_`` and ``-``
    together, so ``X_Forwarded_Proto`` would pass for the header the proxy sets: by default every such name
    is dropped (as nginx's ``underscores_in_headers off``); with ``underscores_in_headers`` only those that
    fold onto a header the proxy reads or sets."""
    if not underscores_in_headers:
        return True
    return lowered.replace(b"_", b"-") in _KINDS
