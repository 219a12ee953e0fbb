"""Reading a head from its bytes, for the parsers that call back once per message rather than once per
header (see ``ProxyProtocol``'s lean parser and docs/architecture.md).

llhttp reads every byte and refuses what it refuses, except in a *plain* head: one whose every byte lies
in a conservative subset of what llhttp accepts and that carries none of the fields llhttp acts on
itself, which :func:`plain_request` and :func:`plain_response` recognise so the proxy can skip llhttp for
it. Otherwise these functions only find where a head ends and, once llhttp accepted it, cut it into the
fields its per-header callbacks would have given, putting those the proxy forwards unread straight into
the head's parts. The compiled request path uses the C build of each in ``head_scan.pxd``; this module is
the pure-Python one, and the tests hold each to the other and to httptools.
"""

from __future__ import annotations

import re
import sys
from typing import Any

__all__ = (
    "content_length",
    "lean_head_end",
    "plain_request",
    "plain_response",
    "read_head",
    "request_line_version",
    "whole_chunks",
)

_TRANSFER_ENCODING = b"transfer-encoding:"

# Plain heads (see plain_request): the bytes each part may hold, a conservative subset of llhttp's.
_NAME = re.compile(rb"[A-Za-z0-9_-]+")
_TARGET = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_VALUE = re.compile(rb"[\t\x20-\x7e]*")
_PLAIN_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
_NOT_IN_PLAIN_REQUEST = (b"transfer-encoding", b"connection", b"proxy-connection", b"upgrade")
_NOT_IN_PLAIN_RESPONSE = (b"transfer-encoding", b"proxy-connection", b"upgrade")


def lean_head_end(data: bytes, start: int) -> int:
    """Where the head that begins at ``start`` of ``data`` ends (past its blank line), or -1 when the lean
    parser is not to take it: not all of it is here, it begins with an empty line, a CR in it is not
    followed by LF, or it has a Transfer-Encoding field (a chunked body's end can only be found by parsing
    it, and the head after it would be lost to the lean parser)."""
    if data[start : start + 1] in (b"", b"\r", b"\n"):
        return -1
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return -1
    head = data[start:end]
    if head.count(b"\r") != head.count(b"\r\n"):
        return -1
    for line in head.split(b"\r\n")[1:]:
        if line[: len(_TRANSFER_ENCODING)].lower() == _TRANSFER_ENCODING:
            return -1
    return end + 4


def read_head(
    data: bytes, start: int, parts: list[bytes], specials: tuple[bytes, ...], request: bool, runs: bool
) -> list[Any]:
    """The fields of the head at ``start`` of ``data`` (after any empty lines), which llhttp accepted, as
    its callbacks give them: each value without the whitespace before it (what follows it stays). Those
    the proxy forwards unread (a name of letters, digits and ``-`` not among the lower-case ``specials``)
    go straight onto ``parts`` as name, ": ", value, CRLF, or with ``runs`` each run of such lines as one
    part, as they came (for a plain head that nothing reads by name); the rest are returned, for the head's
    own classification: ``[target, forwarded count, forwarded size, end, name, value, name, value, ...]``,
    the target that of a ``request`` (else None), ``end`` where the head ends in ``data``."""
    if not 0 <= start <= len(data):
        raise ValueError("start outside the bytes")
    at = start
    while data[at : at + 1] in (b"\r", b"\n"):
        at += 1
    line_end = data.index(b"\r\n", at)
    target = None
    if request:
        words = data[at:line_end].split(b" ")
        target = next(word for word in words[1:] if word)  # llhttp takes more than one space
    end = data.index(b"\r\n\r\n", line_end) + 4
    fields: list[Any] = [target, 0, 0, end]
    run: list[bytes] = []
    for line in data[line_end + 2 : end - 4].split(b"\r\n") if end - 4 > line_end else ():
        name, colon, value = line.partition(b":")
        if not colon:
            raise ValueError("not a head llhttp accepted")
        value = value.lstrip(b" \t")
        if name.replace(b"-", b"").isalnum() and name.lower() not in specials:
            if runs:
                run.append(line + b"\r\n")
            else:
                parts += (name, b": ", value, b"\r\n")
            fields[1] += 1
            fields[2] += len(name) + len(value) + 4
            continue
        if run:
            parts.append(b"".join(run))
            run = []
        fields += (name, value)
    if run:
        parts.append(b"".join(run))
    return fields


def content_length(value: bytes) -> int:
    """A Content-Length value llhttp accepted (digits, perhaps whitespace after them) as a number; -1 when
    it is more than the compiled build's C integers hold (llhttp takes up to 2**64 - 1), or not that."""
    try:
        length = int(value)
    except ValueError:
        return -1
    return length if 0 <= length <= sys.maxsize and value[:1].isdigit() else -1


def request_line_version(data: bytes, method: bytes, target: bytes) -> int:
    """11 or 10 when ``data`` begins with the request line ``method SP target SP HTTP/1.1 CRLF`` (or 1.0);
    else 0, and the caller asks the parser."""
    if data[: len(method)] != method:
        return 0
    at = len(method) + 1 + len(target)
    line_end = data[at : at + 11]
    return 11 if line_end == b" HTTP/1.1\r\n" else 10 if line_end == b" HTTP/1.0\r\n" else 0


def _plain_fields(data: bytes, at: int, stop: int) -> list[tuple[bytes, bytes]] | None:
    """The (lower-case name, value) of each field line from ``at`` to the blank line that ends at ``stop``,
    when every one is plain; else None."""
    fields = []
    while at != stop - 2:
        line_end = data.find(b"\r\n", at, stop)
        if line_end < 0:
            return None
        name, colon, value = data[at:line_end].partition(b":")
        if not colon or not _NAME.fullmatch(name) or not _VALUE.fullmatch(value):
            return None
        fields.append((name.lower(), value.lstrip(b" \t")))
        at = line_end + 2
    return fields if data[at:stop] == b"\r\n" else None


def plain_request(data: bytes, start: int, end: int) -> tuple[bytes, bool] | None:
    """``(method, keep_alive)`` of the request head from ``start`` to ``end`` (just past its blank line, as
    :func:`lean_head_end` found it) when it is plain, so that llhttp need not read it: every byte in a
    conservative subset of what llhttp accepts (a method of a short list, an origin-form target of URI
    characters, HTTP/1.1 or 1.0, fields of letters, digits, ``-`` and ``_`` with printable values), at most
    one Content-Length, of at most 18 digits, and no Transfer-Encoding, Connection, Proxy-Connection or
    Upgrade field: no upgrade, and the version alone says keep-alive. Else None, and llhttp decides."""
    if not 0 <= start < end <= len(data):
        return None
    line_end = data.find(b"\r\n", start, end)
    if line_end < 0:
        return None
    method, _, rest = data[start:line_end].partition(b" ")
    target, _, version = rest.partition(b" ")
    if method not in _PLAIN_METHODS or not _TARGET.fullmatch(target) or version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return None
    fields = _plain_fields(data, line_end + 2, end)
    if fields is None or any(name in _NOT_IN_PLAIN_REQUEST for name, _ in fields):
        return None
    if not _plain_length([value for name, value in fields if name == b"content-length"]):
        return None
    return method, version == b"HTTP/1.1"


def _plain_length(values: list[bytes]) -> bool:
    """Whether a head's Content-Length ``values`` are plain: at most one, of 1 to 18 digits and nothing else."""
    return len(values) <= 1 and all(re.fullmatch(rb"[0-9]{1,18}", value) for value in values)


def plain_response(data: bytes) -> tuple[int, bool] | None:
    """``(status, keep_alive)`` of the response head at the start of ``data`` when it is all there and
    plain (see :func:`plain_request`): HTTP/1.1, a status of 200-599, exactly one Content-Length of at
    most 18 digits, a Connection of only ``close`` or ``keep-alive`` if any, and no Transfer-Encoding,
    Proxy-Connection or Upgrade field. Else None, and llhttp decides."""
    end = data.find(b"\r\n\r\n")
    line_end = data.find(b"\r\n")
    if end < 0 or data[:9] != b"HTTP/1.1 " or data[12:13] != b" " or not data[9:12].isdigit():
        return None
    status = int(data[9:12])
    if not 200 <= status <= 599 or not _VALUE.fullmatch(data, 13, line_end):
        return None
    fields = _plain_fields(data, line_end + 2, end + 4)
    if fields is None or any(name in _NOT_IN_PLAIN_RESPONSE for name, _ in fields):
        return None
    lengths = [value for name, value in fields if name == b"content-length"]
    if len(lengths) != 1 or not _plain_length(lengths):
        return None
    keep_alive = True
    for name, value in fields:
        if name == b"connection":
            if value.lower() not in (b"close", b"keep-alive"):
                return None
            keep_alive = keep_alive and value.lower() != b"close"
    return status, keep_alive


_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,15})\r\n")


def whole_chunks(data: bytes, start: int) -> bool:
    """Whether ``data`` from ``start`` on is one or more whole chunks of a chunked body, each ``SIZE CRLF data
    CRLF`` with SIZE 1 to 15 hex digits and no extension (so not the last chunk): a parser between chunks
    before them is between chunks after them, and llhttp need not read them."""
    if not 0 <= start < len(data):
        return False
    at = start
    while at < len(data):
        size = _CHUNK_SIZE.match(data, at)
        if size is None or int(size.group(1), 16) == 0:
            return False
        at = size.end() + int(size.group(1), 16)
        if data[at : at + 2] != b"\r\n":
            return False
        at += 2
    return True
