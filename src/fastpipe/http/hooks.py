"""What the gateway's Python hooks see and return: :class:`Request`, :class:`Headers`, :class:`Response`
and :class:`ResponseInfo`.

``on_request(request)`` runs once a request head is parsed, before an upstream is chosen; it may change
the headers, pick another route or upstream group, or answer by itself with a :class:`Response`.
``on_response(exchange, pipe)`` runs when the upstream's response head arrived, before the first byte
goes to the client; ``exchange`` is a :class:`ResponseInfo`. The proxy builds these objects only when a
hook is configured: without hooks a request costs nothing for the feature.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Union

from . import headers as h
from .request_head import upstream_request_head

__all__ = ("Headers", "Request", "Response", "ResponseInfo", "head_from_request", "response_bytes")

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")

# Names a hook may not set: they frame the message or belong to one hop, and the proxy writes them.
RESERVED = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        # set by the proxy itself on every request it forwards: a hook's would be a second copy
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    }
)

# Statuses whose responses never have a body (RFC 9110 §15.3.5, §15.4.5): no Content-Length is sent either.
_BODILESS = frozenset({204, 304})

HeaderItems = Union[Mapping[str, str], Iterable[tuple[str, str]]]


def _checked(name: str, value: str) -> tuple[str, str]:
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise ValueError(f"not a valid header name: {name!r}")
    if not isinstance(value, str):
        raise TypeError(f"header {name!r}: the value must be a str, got {type(value).__name__}")
    if _BAD_VALUE.search(value) or (not value.isascii() and not _latin1(value)):
        raise ValueError(f"header {name!r}: the value has a control character or cannot be sent")
    if name.lower() in RESERVED:
        raise ValueError(f"header {name!r} frames the message or belongs to one hop: the proxy sets it")
    return name, value


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


class Headers:
    """Header fields in order, names compared case-insensitively; values are ``str`` (latin-1).

    ``headers["x"]`` is the first value (KeyError if none), ``get``/``getall`` read, ``headers["x"] = v``
    replaces every field of that name, ``add`` appends one, ``del headers["x"]`` removes them all.
    Names that frame the message or belong to one hop (Content-Length, Transfer-Encoding, Connection, ...)
    cannot be set nor removed (ValueError): the proxy writes those.
    """

    __slots__ = ("_items", "changed")

    def __init__(self, items: HeaderItems = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: list[tuple[str, str]] = [_checked(name, value) for name, value in pairs]
        self.changed = False  # set by any write: the proxy rebuilds the head only then

    @classmethod
    def _trusted(cls, items: list[tuple[str, str]]) -> Headers:
        """From fields the parser already checked (no validation on the request path)."""
        headers = cls.__new__(cls)
        headers._items = items
        headers.changed = False
        return headers

    def __getitem__(self, name: str) -> str:
        key = name.lower()
        for item, value in self._items:
            if item.lower() == key:
                return value
        raise KeyError(name)

    def get(self, name: str, default: str | None = None) -> str | None:
        try:
            return self[name]
        except KeyError:
            return default

    def getall(self, name: str) -> list[str]:
        key = name.lower()
        return [value for item, value in self._items if item.lower() == key]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(item.lower() == name.lower() for item, _ in self._items)

    def __setitem__(self, name: str, value: str) -> None:
        name, value = _checked(name, value)
        key = name.lower()
        kept = [(item, old) for item, old in self._items if item.lower() != key]
        kept.append((name, value))
        self._items = kept
        self.changed = True

    def add(self, name: str, value: str) -> None:
        self._items.append(_checked(name, value))
        self.changed = True

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        if key in RESERVED:
            # Without its Content-Length the upstream would read the request's body as the next request.
            raise ValueError(f"header {name!r} frames the message or belongs to one hop: the proxy sets it")
        kept = [(item, value) for item, value in self._items if item.lower() != key]
        if len(kept) == len(self._items):
            raise KeyError(name)
        self._items = kept
        self.changed = True

    def pop(self, name: str, default: str | None = None) -> str | None:
        value = self.get(name, default)
        if name in self:
            del self[name]
        return value

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter([name for name, _ in self._items])

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Request:
    """A request as ``on_request`` sees it. ``headers`` are those the client sent that go upstream
    (Host among them; hop-by-hop headers and Transfer-Encoding are not shown; a Content-Length is, but
    the body goes up with the client's own whatever the hook does). Setting ``route`` (a route name)
    or ``upstream`` (an upstream group name) sends the request there; an unknown name is a 500. A request
    no route matched comes with ``route`` and ``upstream`` None: left so, it gets the 404. ``tag``
    (anything: a team, a key id) is carried into the exchange record, to bill usage to whoever asked."""

    __slots__ = ("_framing", "_headers", "client_host", "method", "peer", "route", "tag", "target", "upstream", "xff")

    def __init__(
        self,
        method: str,
        target: str,
        headers: Headers,
        peer: str,
        route: str | None,
        upstream: str | None,
        xff: bytes | None = None,
        client_host: bytes | None = None,
    ) -> None:
        self.method = method
        self.target = target  # path and query, as sent (settable: the target sent upstream)
        self._headers = headers
        # The client's Content-Length: the body is relayed by it whatever the hook does to ``headers``.
        self._framing = [(name, value) for name, value in headers._items if name.lower() == "content-length"]
        self.peer = peer
        self.route = route
        self.upstream = upstream
        self.xff = xff  # X-Forwarded-For as it came in; the proxy appends the peer to it
        self.client_host = client_host  # Host as the client sent it: X-Forwarded-Host, whatever the hook sets
        self.tag: object = None  # anything the hook sets here is the exchange record's ``tag``

    @property
    def headers(self) -> Headers:
        return self._headers

    @headers.setter
    def headers(self, headers: Headers | HeaderItems) -> None:
        """Replace the headers whole: a :class:`Headers`, a mapping or (name, value) pairs, checked here (in
        the hook: an unusable value is the hook's error, a 500)."""
        if not isinstance(headers, Headers):
            if isinstance(headers, (str, bytes)) or not isinstance(headers, (Mapping, Iterable)):
                raise TypeError(f"request.headers must be Headers, a mapping or pairs, got {type(headers).__name__}")
            headers = Headers(headers)
        self._headers = headers

    @property
    def path(self) -> str:
        """The target without its query."""
        return self.target.partition("?")[0]

    def checked_target(self) -> bytes:
        """``target`` as bytes, refused (ValueError) unless it is an origin-form path (or ``*``)."""
        target = self.target
        if not isinstance(target, str) or not (target.startswith("/") or target == "*"):
            raise ValueError(f"request target must be a path starting with '/', got {target!r}")
        if _BAD_TARGET.search(target):
            raise ValueError(f"request target has a space or a control character: {target!r}")
        return target.encode("latin-1")

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} route={self.route!r}>"


class Response:
    """A complete answer from a hook: ``Response(429, headers={"Retry-After": "60"}, body=b"...")``.

    The proxy adds Content-Length and the connection's own headers; a ``str`` body is sent as UTF-8.
    """

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: HeaderItems | None = None, body: bytes | str = b"") -> None:
        if type(status) is not int or not 200 <= status <= 599:
            raise ValueError(f"a hook's Response needs a final status 200-599, got {status!r}")
        if isinstance(body, str):
            body = body.encode("utf-8")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"a Response body must be bytes or str, got {type(body).__name__}")
        if body and status in _BODILESS:
            # The client reads no body after this status: the bytes would be taken for the next response.
            raise ValueError(f"a {status} response has no body, got {len(body)} bytes")
        self.status = status
        self.headers = Headers(headers or ())
        self.body = bytes(body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"


class ResponseInfo:
    """The exchange as ``on_response`` sees it: the request, where it went, and the response head."""

    __slots__ = ("headers", "method", "peer", "route", "server", "status", "target", "upstream")

    def __init__(
        self,
        method: str,
        target: str,
        peer: str,
        route: str,
        upstream: str,
        server: str,
        status: int,
        headers: Headers,
    ) -> None:
        self.method = method
        self.target = target
        self.peer = peer
        self.route = route
        self.upstream = upstream
        self.server = server  # the URL of the server that answered
        self.status = status
        self.headers = headers  # the response's end-to-end headers (changing them changes nothing)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def __repr__(self) -> str:
        return f"<ResponseInfo {self.method} {self.target} {self.status} route={self.route!r}>"


def headers_of(parts: list[bytes]) -> list[tuple[str, str]]:
    """The (name, value) pairs of head ``parts`` (``parts[0]`` the start line, then name, ": ", value,
    CRLF per header), decoded as latin-1."""
    return [
        (parts[index].decode("latin-1"), parts[index + 2].decode("latin-1")) for index in range(1, len(parts) - 3, 4)
    ]


def parts_of(items: list[tuple[str, str]], start_line: bytes) -> list[bytes]:
    """Head parts from (name, value) pairs: the inverse of :func:`headers_of`."""
    parts = [start_line]
    for name, value in items:
        parts += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
    return parts


def head_from_request(
    request: Request,
    method: bytes,
    target: bytes,
    *,
    http10: bool,
    chunked: bool,
    tunnel: bytes | None,
    forwarding: h.Forwarding,
    destination: h.Destination,
) -> bytes:
    """The head to send upstream for a request an ``on_request`` hook has seen (and perhaps changed)."""
    host: bytes | None = None
    items = []
    framing = request._framing
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered == "host":
            if host is None:
                host = value.encode("latin-1")
        elif lowered == "content-length":
            items += framing  # the client's own, in its place (a hook cannot set one)
            framing = []
        else:
            items.append((name, value))
    items += framing  # headers replaced whole: the body is still framed by the client's Content-Length
    parts = parts_of(items, b"")
    return upstream_request_head(
        parts,
        method=method,
        target=target,
        drop=None,
        host=host,
        xff=request.xff,
        forwarded_host=request.client_host,
        forwarding=forwarding,
        destination=destination,
        chunked=chunked,
        http10=http10,
        tunnel=tunnel,
    )


def response_bytes(response: Response, *, head_only: bool, keep_alive: bool, http10: bool) -> bytes:
    """A hook's :class:`Response` as the bytes of a complete HTTP/1.1 message on this connection."""
    lines = [h.status_line(response.status)]
    for name, value in response.headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    if response.status not in _BODILESS:
        lines.append(b"Content-Length: %d\r\n" % len(response.body))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    elif http10:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(response.body)
    return b"".join(lines)
