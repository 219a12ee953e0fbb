"""What the proxy knows about header names, status lines and its own error responses.

Headers are classified once, by their lower-cased name, into a small integer kind; everything the
proxy does not need to look at is forwarded untouched (name and value bytes as the parser gave them).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final, Protocol

__all__ = (
    "HOP_BY_HOP",
    "PROTECTED_FROM_CONNECTION",
    "REQUEST_KINDS",
    "REQUEST_KINDS_BY_SPELLING",
    "RESPONSE_KINDS",
    "RESPONSE_KINDS_BY_SPELLING",
    "STATUS_LINES",
    "Destination",
    "Forwarding",
    "connection_tokens",
    "error_response",
    "lists_upgrade",
    "local_response",
    "status_line",
    "tunnel_protocols",
    "without_names",
)

# Kinds a header can have; FORWARD (absent from the tables) means "forward as is".
FORWARD: Final = 0
DROP: Final = 1  # hop-by-hop: never forwarded, nothing to remember
CONNECTION: Final = 2  # hop-by-hop, and names more hop-by-hop headers
TRANSFER_ENCODING: Final = 3  # hop-by-hop; the proxy frames each hop itself
UPGRADE: Final = 4  # hop-by-hop, kept only to open a tunnel (with Connection: upgrade)
CONTENT_LENGTH: Final = 5  # end-to-end, forwarded, but its value matters
HOST: Final = 6
X_FORWARDED_FOR: Final = 7  # the peer address is appended to it
X_FORWARDED_SET: Final = 8  # X-Forwarded-Proto/-Host: the proxy sets its own

# RFC 9110 §7.6.1 plus the de-facto ones (Keep-Alive, Proxy-Connection).
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)

_COMMON: Final = {
    b"connection": CONNECTION,
    b"keep-alive": DROP,
    b"proxy-connection": DROP,
    b"te": DROP,
    b"trailer": DROP,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"upgrade": UPGRADE,
    b"content-length": CONTENT_LENGTH,
}
REQUEST_KINDS: Final = {
    **_COMMON,
    b"http2-settings": DROP,  # goes with Upgrade: h2c, which the proxy never passes on
    b"host": HOST,
    b"x-forwarded-for": X_FORWARDED_FOR,
    b"x-forwarded-proto": X_FORWARDED_SET,
    b"x-forwarded-host": X_FORWARDED_SET,
}
RESPONSE_KINDS: Final = dict(_COMMON)


def _by_spelling(kinds: dict[bytes, int], forwarded: tuple[bytes, ...]) -> dict[bytes, int]:
    """``kinds`` keyed by the spellings names usually arrive in (lower-case and Title-Case) and extended
    with common names that are forwarded as is: most header names then need neither lower-casing nor an
    underscore check. A name missing here is lower-cased and looked up in ``kinds``, so this table only
    saves work; every value in it is what that slower path answers."""
    table = {}
    for name in (*kinds, *forwarded):
        kind = kinds.get(name, FORWARD)
        table[name] = kind
        table[b"-".join(word.capitalize() for word in name.split(b"-"))] = kind
    return table


REQUEST_KINDS_BY_SPELLING: Final = _by_spelling(
    REQUEST_KINDS,
    (
        b"accept",
        b"accept-encoding",
        b"accept-language",
        b"authorization",
        b"cache-control",
        b"content-type",
        b"cookie",
        b"if-modified-since",
        b"if-none-match",
        b"origin",
        b"pragma",
        b"range",
        b"referer",
        b"user-agent",
        b"x-request-id",
    ),
)
RESPONSE_KINDS_BY_SPELLING: Final = _by_spelling(
    RESPONSE_KINDS,
    (
        b"cache-control",
        b"content-encoding",
        b"content-type",
        b"date",
        b"etag",
        b"last-modified",
        b"server",
        b"set-cookie",
        b"vary",
        b"x-request-id",
    ),
)

# Connection options the parser already acts on; anything else names a header to drop.
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})

# Fields meant for every recipient, which Connection must never name (RFC 9110 §7.6.1): dropping them as
# hop-by-hop would strip a message's framing, its Host, or the forwarding headers the proxy sets, while
# the proxy still relays the body by its own count. A message naming one is refused, never "repaired".
PROTECTED_FROM_CONNECTION: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)


class ConnectionNamesProtected(ValueError):
    """A Connection header named a field that must reach the next hop."""


def connection_tokens(value: bytes) -> list[bytes]:
    """Header names a Connection value lists besides its own options (lower-cased).

    Raises :class:`ConnectionNamesProtected` for a name in :data:`PROTECTED_FROM_CONNECTION`.
    """
    names = []
    for token in value.split(b","):
        token = token.strip().lower()
        if token and token not in _CONNECTION_OPTIONS:
            if token in PROTECTED_FROM_CONNECTION:
                shown = token.decode("latin-1")
                raise ConnectionNamesProtected(f"Connection names {shown}, which must reach the next hop")
            names.append(token)
    return names


def lists_upgrade(value: bytes) -> bool:
    """Whether a Connection value lists the ``upgrade`` option."""
    return any(token.strip().lower() == b"upgrade" for token in value.split(b","))


def tunnel_protocols(value: bytes) -> bool:
    """Whether an Upgrade value asks for a protocol the proxy tunnels: any but ``h2c`` (HTTP/2 over
    cleartext is not proxied: the request goes on as HTTP/1.1 without its Upgrade)."""
    tokens = [token.strip().lower() for token in value.split(b",")]
    return bool(tokens) and all(token and not token.startswith(b"h2c") for token in tokens)


def without_names(parts: list[bytes], names: list[bytes]) -> list[bytes]:
    """Header parts (``parts[0]`` the start line, then name, ": ", value, CRLF per header) less the named
    headers (lower-cased names); used for the headers a Connection header lists, in both directions."""
    dropped = set(names)
    kept = [parts[0]]
    for index in range(1, len(parts), 4):
        if parts[index].lower() not in dropped:
            kept += parts[index : index + 4]
    return kept


def _reason(code: int) -> bytes:
    try:
        return HTTPStatus(code).phrase.encode("ascii")
    except ValueError:
        return b""


# The status lines of every valid code (status_line answers the rest)
STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, _reason(code)) for code in range(100, 600)}


def status_line(code: int) -> bytes:
    """``HTTP/1.1 <code> <standard reason>\\r\\n``; the proxy speaks its own version to clients."""
    line = STATUS_LINES.get(code)
    if line is None:
        line = b"HTTP/1.1 %d \r\n" % code
    return line


class Forwarding:
    """What one client connection adds to every request it forwards: X-Forwarded-For and -Proto."""

    __slots__ = ("peer", "plain", "proto")

    def __init__(self, peer: bytes, proto: bytes) -> None:
        self.peer = peer
        self.proto = proto
        self.plain = b"X-Forwarded-For: " + peer + b"\r\nX-Forwarded-Proto: " + proto + b"\r\n"  # no XFF came in


class Destination(Protocol):
    """What the route a request takes changes in its head (:class:`~fastpipe.http.routing.ProxyRoute`)."""

    host_line: bytes  # ``Host: <upstream>\r\n``, for rewrite_host and HTTP/1.0 requests without Host
    rewrite_host: bool
    set_names: list[bytes] | None  # lower-cased names of the headers the route sets (the client's go)
    set_lines: bytes  # the route's own header lines


def local_response(
    code: int, body: bytes, *, head_only: bool, keep_alive: bool, http10: bool, nosniff: bool = False
) -> bytes:
    """A complete plain-text response the proxy answers itself on a connection that may go on
    (``nosniff`` for a body that echoes what the client sent)."""
    connection = (
        b"" if keep_alive and not http10 else b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n"
    )
    return (
        status_line(code)
        + b"Content-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: %d\r\n" % len(body)
        + (b"X-Content-Type-Options: nosniff\r\n" if nosniff else b"")
        + connection
        + b"\r\n"
        + (b"" if head_only else body)
    )


def error_response(code: int, detail: str = "") -> bytes:
    """A complete, closing response the proxy sends on its own behalf (bad input, upstream faults)."""
    text = f"{code} {_reason(code).decode('ascii')}" + (f": {detail}" if detail else "") + "\n"
    body = text.encode("utf-8", "replace")
    return (
        status_line(code)
        + b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
